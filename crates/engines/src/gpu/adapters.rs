//! The adapters wgpu sees: listing them for `voxflip devices`, and choosing one.
use crate::error::{EngineError, Result};

/// Which adapter to use.
#[derive(Clone, Debug, Default)]
pub struct AdapterChoice {
    /// Case-insensitive substring of the adapter name; None = the best one.
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
    for a in adapters {
        let info = a.get_info();
        if let Some(want) = &choice.name {
            if !info.name.to_lowercase().contains(&want.to_lowercase()) {
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
