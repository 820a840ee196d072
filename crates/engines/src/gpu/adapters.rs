//! The adapters wgpu sees: listing them for `voxflip devices`, and choosing one or several.
//!
//! An adapter is named by a pattern: a case-insensitive substring of its name or of
//! `name (backend)` (so `vulkan` or `gl` tells apart Mesa's two llvmpipe adapters, which
//! have the same name), or `#K`, the K-th adapter `voxflip devices` lists.
use crate::error::{EngineError, Result};

/// Which adapter to use.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// An adapter pattern (see the module docs); None = the best one.
    pub name: Option<String>,
    /// Accept software adapters (lavapipe, llvmpipe, WARP): correct but slow, useful for
    /// tests and CI, never picked silently.
    pub allow_software: bool,
}

/// One adapter as `voxflip devices` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// A CPU implementation (DeviceType::Cpu).
    pub software: bool,
    /// Whether the adapter can run compute shaders at all (not every GL driver can).
    pub compute: bool,
    pub max_storage_buffer_binding_size: u64,
    pub max_buffer_size: u64,
    pub max_compute_workgroup_storage_size: u32,
    pub max_compute_invocations_per_workgroup: u32,
    pub max_compute_workgroups_per_dimension: u32,
}

fn instance() -> wgpu::Instance {
    // _from_env: WGPU_BACKEND and friends still let a user steer wgpu.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn summarize(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    let l = a.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
        software: info.device_type == wgpu::DeviceType::Cpu,
        compute: a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS),
        max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
        max_buffer_size: l.max_buffer_size,
        max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
        max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        max_compute_workgroups_per_dimension: l.max_compute_workgroups_per_dimension,
    }
}

/// Every adapter wgpu can see, usable or not.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all())).iter().map(summarize).collect()
}

/// A human-readable listing for `voxflip devices`.
pub fn describe_adapters() -> String {
    let list = list_adapters();
    if list.is_empty() {
        return "no GPU adapters found (voxflip will use --backend cpu)\n".to_string();
    }
    let mut out = String::new();
    for (i, a) in list.iter().enumerate() {
        out += &format!(
            "[{i}] {} ({} {}, {}){}{}\n    driver: {}\n    max_storage_buffer_binding_size {} MiB, max_buffer_size {} MiB, \
             workgroup storage {} KiB, invocations/workgroup {}, workgroups/dimension {}\n",
            a.name,
            a.backend,
            a.device_type,
            if a.software { "software" } else { "hardware" },
            if a.software { " [used only with --backend gpu]" } else { "" },
            if a.compute { "" } else { " [no compute shaders: unusable]" },
            if a.driver.is_empty() { "?" } else { &a.driver },
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroup_storage_size / 1024,
            a.max_compute_invocations_per_workgroup,
            a.max_compute_workgroups_per_dimension,
        );
    }
    out
}

/// Whether a hardware (non-software) adapter with compute shaders exists.
pub fn hardware_adapter_available() -> bool {
    list_adapters().iter().any(|a| !a.software && a.compute)
}

/// The adapter `choice` selects: among those whose name contains `choice.name` (any, if
/// None), hardware first (software only if allowed), the best by [`rank`] that `unsuitable`
/// does not reject. The error lists what was skipped and why.
pub(crate) fn select_adapter(
    choice: &AdapterChoice,
    unsuitable: impl Fn(&wgpu::Adapter) -> Option<String>,
) -> Result<wgpu::Adapter> {
    let inst = instance();
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    let mut rejected = Vec::new();
    let mut candidates: Vec<wgpu::Adapter> = Vec::new();
    for (index, a) in adapters.into_iter().enumerate() {
        let info = a.get_info();
        if let Some(want) = &choice.name {
            if !matches(want, index, &info) {
                continue;
            }
        }
        if info.device_type == wgpu::DeviceType::Cpu && !choice.allow_software {
            rejected.push(format!("{} (software adapter: used only with --backend gpu)", info.name));
            continue;
        }
        if let Some(why) = unsuitable(&a) {
            rejected.push(format!("{} ({why})", info.name));
            continue;
        }
        candidates.push(a);
    }
    candidates.sort_by_key(|a| rank(&a.get_info()));
    candidates.into_iter().next().ok_or_else(|| {
        let wanted = choice.name.as_ref().map(|n| format!(" matching '{n}'")).unwrap_or_default();
        let skipped = if rejected.is_empty() { String::new() } else { format!(" (skipped: {})", rejected.join(", ")) };
        EngineError::Unsupported(format!("no GPU adapter found{wanted}{skipped}; use --backend cpu"))
    })
}

/// Whether adapter `index` (in wgpu's enumeration, as `voxflip devices` numbers them) with
/// `info` answers to `pattern` (see the module docs).
fn matches(pattern: &str, index: usize, info: &wgpu::AdapterInfo) -> bool {
    let pattern = pattern.trim();
    if let Some(k) = pattern.strip_prefix('#').and_then(|k| k.parse::<usize>().ok()) {
        return k == index;
    }
    format!("{} ({:?})", info.name, info.backend).to_lowercase().contains(&pattern.to_lowercase())
}

/// What `--adapter` asks for, parsed from the text as typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterSpec {
    /// No `--adapter`: the best adapter.
    Best,
    /// One pattern: the best adapter it matches.
    One(String),
    /// `all`: every adapter the backend allows (software ones only with `--backend gpu`)
    /// that can run compute shaders, best first.
    All,
    /// `A,B,...` (commas inside parentheses are part of a name): one distinct adapter per
    /// pattern, in this order: for each, the best
    /// adapter it matches that no earlier pattern took (so `llvmpipe,llvmpipe` is Mesa's
    /// Vulkan and GL adapters).
    List(Vec<String>),
}

impl AdapterSpec {
    pub fn parse(typed: Option<&str>) -> AdapterSpec {
        let Some(t) = typed else { return AdapterSpec::Best };
        if t.trim().eq_ignore_ascii_case("all") {
            return AdapterSpec::All;
        }
        let parts: Vec<String> =
            split_top_level(t).into_iter().map(str::trim).filter(|p| !p.is_empty()).map(String::from).collect();
        match parts.len() {
            0 => AdapterSpec::One(t.to_string()),
            1 => AdapterSpec::One(parts[0].clone()),
            _ => AdapterSpec::List(parts),
        }
    }

    /// Whether it names several adapters (`all` or a list).
    pub fn is_multi(&self) -> bool {
        matches!(self, AdapterSpec::All | AdapterSpec::List(_))
    }
}

/// `t` cut at its commas outside parentheses: adapter names have commas only inside them
/// (`llvmpipe (LLVM 15.0.6, 256 bits)`), so a whole name is one pattern.
fn split_top_level(t: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut from) = (Vec::new(), 0i32, 0);
    for (i, c) in t.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&t[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&t[from..]);
    parts
}

/// The adapters a multi-adapter `spec` (`typed` as given) selects, as `#K` patterns for
/// [`AdapterChoice::name`], first the one that computes the observed maps. Errors:
/// `Invalid` for a pattern that matches no adapter, or only adapters earlier patterns took
/// (one line naming it); `Unsupported` when no allowed adapter remains (software adapters
/// without `allow_software`, adapters without compute shaders), which `--backend auto`
/// takes as "use the CPU engine".
pub fn resolve_adapters(spec: &AdapterSpec, typed: &str, allow_software: bool) -> Result<Vec<String>> {
    let inst = instance();
    let adapters = pollster::block_on(inst.enumerate_adapters(wgpu::Backends::all()));
    let infos: Vec<(usize, wgpu::AdapterInfo, bool)> = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            (i, a.get_info(), a.get_downlevel_capabilities().flags.contains(wgpu::DownlevelFlags::COMPUTE_SHADERS))
        })
        .collect();
    // Why an adapter cannot be used, if it cannot.
    let refuse = |info: &wgpu::AdapterInfo, compute: bool| -> Option<&'static str> {
        if info.device_type == wgpu::DeviceType::Cpu && !allow_software {
            Some("software adapter: used only with --backend gpu")
        } else if !compute {
            Some("no compute shaders")
        } else {
            None
        }
    };
    let mut by_rank: Vec<&(usize, wgpu::AdapterInfo, bool)> = infos.iter().collect();
    by_rank.sort_by_key(|(_, info, _)| rank(info));
    let mut chosen: Vec<usize> = Vec::new();
    match spec {
        AdapterSpec::All => {
            let mut skipped = Vec::new();
            for (i, info, compute) in &by_rank {
                match refuse(info, *compute) {
                    None => chosen.push(*i),
                    Some(why) => skipped.push(format!("{} ({why})", info.name)),
                }
            }
            if chosen.is_empty() {
                let skipped =
                    if skipped.is_empty() { String::new() } else { format!(" (skipped: {})", skipped.join(", ")) };
                return Err(EngineError::Unsupported(format!(
                    "--adapter all: no GPU adapter found{skipped}; use --backend cpu"
                )));
            }
            if !skipped.is_empty() {
                log::info!("--adapter all skips {}", skipped.join(", "));
            }
        }
        AdapterSpec::List(patterns) => {
            for p in patterns {
                let matching: Vec<_> = by_rank.iter().filter(|(i, info, _)| matches(p, *i, info)).collect();
                if matching.is_empty() {
                    return Err(EngineError::Invalid(format!(
                        "--adapter {typed}: no GPU adapter matches '{p}' (see voxflip devices)"
                    )));
                }
                let free: Vec<_> = matching.iter().filter(|(i, _, _)| !chosen.contains(i)).collect();
                if free.is_empty() {
                    return Err(EngineError::Invalid(format!(
                        "--adapter {typed}: '{p}' matches only adapters that earlier names took"
                    )));
                }
                match free.iter().find(|(_, info, compute)| refuse(info, *compute).is_none()) {
                    Some((i, _, _)) => chosen.push(*i),
                    None => {
                        let (_, info, compute) = free[0];
                        let why = refuse(info, *compute).expect("refused");
                        return Err(EngineError::Unsupported(format!(
                            "--adapter {typed}: '{p}' matches only {} ({why}); use --backend cpu",
                            info.name
                        )));
                    }
                }
            }
        }
        AdapterSpec::Best | AdapterSpec::One(_) => {
            return Err(EngineError::Invalid(format!("--adapter {typed}: one adapter, not several")));
        }
    }
    Ok(chosen.into_iter().map(|i| format!("#{i}")).collect())
}

fn rank(info: &wgpu::AdapterInfo) -> (u32, u32) {
    let t = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let b = if info.backend == wgpu::Backend::Gl { 1 } else { 0 };
    (t, b)
}

#[cfg(test)]
mod tests {
    use super::AdapterSpec;

    #[test]
    fn adapter_specs_parse() {
        assert_eq!(AdapterSpec::parse(None), AdapterSpec::Best);
        assert_eq!(AdapterSpec::parse(Some(" ALL ")), AdapterSpec::All);
        assert_eq!(AdapterSpec::parse(Some("vulkan")), AdapterSpec::One("vulkan".into()));
        // A whole adapter name, commas and all, is one pattern.
        let name = "llvmpipe (LLVM 15.0.6, 256 bits)";
        assert_eq!(AdapterSpec::parse(Some(name)), AdapterSpec::One(name.into()));
        assert_eq!(
            AdapterSpec::parse(Some(&format!("{name}, #1,gl"))),
            AdapterSpec::List(vec![name.into(), "#1".into(), "gl".into()])
        );
        assert_eq!(AdapterSpec::parse(Some("nvidia,")), AdapterSpec::One("nvidia".into()));
        assert!(AdapterSpec::parse(Some("a,b")).is_multi() && !AdapterSpec::parse(Some("a")).is_multi());
    }
}
