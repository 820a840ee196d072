//! Every shader variant parsed, validated and translated to SPIR-V by naga (the compiler
//! wgpu itself uses), with its pipeline constants applied: a shader that does not compile
//! fails here, on any machine, with or without a GPU adapter. Also checks the workgroup
//! memory each module declares against what the host plans for it (wgpu does not check it
//! against the adapter's limit; lavapipe allows 32 KiB).
use crate::variants;
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn workgroup_bytes(module: &naga::Module) -> u32 {
    module
        .global_variables
        .iter()
        .filter(|(_, g)| g.space == naga::AddressSpace::WorkGroup)
        .map(|(_, g)| module.types[g.ty].inner.size(module.to_ctx()))
        .sum()
}

#[test]
fn every_shader_variant_compiles() {
    let all = variants();
    assert!(all.len() >= 10, "four glm_stat kernels x two row-source variants, the spatial module, exact TFCE");
    for v in &all {
        let module = naga::front::wgsl::parse_str(&v.source)
            .unwrap_or_else(|e| panic!("{}: {}", v.label, e.emit_to_string(&v.source)));
        let info = Validator::new(ValidationFlags::all(), Capabilities::default())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {}", v.label, e.emit_to_string(&v.source)));
        let constants: naga::back::PipelineConstants = v.overrides.iter().map(|&(k, x)| (k.to_string(), x)).collect();
        let (resolved, resolved_info) =
            naga::back::pipeline_constants::process_overrides(&module, &info, None, &constants)
                .unwrap_or_else(|e| panic!("{}: pipeline constants: {e}", v.label));
        // Every constant the host sets exists in the module (a renamed one would be ignored
        // by the driver), and every one without a default is set.
        let declared: Vec<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        for (name, _) in &v.overrides {
            assert!(declared.contains(name), "{}: no override {name} in the module", v.label);
        }
        for (_, o) in module.overrides.iter() {
            let name = o.name.as_deref().unwrap_or("?");
            assert!(o.init.is_some() || constants.contains_key(name), "{}: {name} left unset", v.label);
        }
        for ep in &resolved.entry_points {
            let pipeline = naga::back::spv::PipelineOptions { shader_stage: ep.stage, entry_point: ep.name.clone() };
            naga::back::spv::write_vec(&resolved, &resolved_info, &Default::default(), Some(&pipeline))
                .unwrap_or_else(|e| panic!("{} ({}): SPIR-V: {e}", v.label, ep.name));
        }
        assert_eq!(workgroup_bytes(&module), v.workgroup_bytes, "{}: workgroup memory", v.label);
        assert!(v.workgroup_bytes <= 32 * 1024, "{}: more than lavapipe's 32 KiB of workgroup memory", v.label);
    }
}

#[test]
fn a_broken_shader_is_caught() {
    // The check above is not vacuous: a type error is refused.
    let src = "@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }";
    let parsed = naga::front::wgsl::parse_str(src);
    let valid = parsed.map(|m| Validator::new(ValidationFlags::all(), Capabilities::default()).validate(&m).is_ok());
    assert!(!matches!(valid, Ok(true)));
}

#[test]
fn generated_declarations_are_in_the_sources() {
    for v in variants() {
        assert!(!v.source.contains("#import"), "{}: unresolved import", v.label);
    }
    let glm = crate::GlmKernel::Wide.wgsl_source();
    assert!(glm.contains("struct GlmParams {") && glm.contains("const FLAG_OBSERVED: u32 = 2u;"));
    assert_eq!(glm.matches("fn statistic4(").count(), 1);
    let table = crate::glm_stat_table::wgsl_source();
    assert!(table.contains("struct GlmParams {") && table.contains("const TABLE_ROWS: u32 = 64u;"));
    assert!(table.contains("override BITS: u32") && table.matches("fn statistic4(").count() == 1);
    let sp = crate::spatial::wgsl_source();
    assert!(sp.contains("struct SpatialParams {") && sp.contains("fn enter(") && sp.contains("fn init("));
    let ex = crate::spatial::tfce_exact_wgsl_source();
    assert!(ex.contains("struct TfceExactParams {") && ex.contains("const EXACT_HIST_BINS: u32 = 2048u;"));
    let vw = crate::glm_stat_voxelwise::wgsl_source();
    assert!(vw.contains("struct GlmParams {") && vw.contains("const TV: u32 = 256u;"));
    assert!(vw.contains("override HAS_SRC: bool") && vw.matches("fn statistic4(").count() == 1);
    assert!(ex.contains("const NONE: u32 = 4294967295u;") && ex.contains("fn exact_step("));
}
