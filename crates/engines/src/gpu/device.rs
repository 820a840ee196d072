//! The one GPU device layer every host module uses: opening a device on an adapter,
//! collecting wgpu's errors as typed [`EngineError`]s, buffers, submission and read-back.
//!
//! wgpu reports errors through one callback per device (uncaptured errors, device loss);
//! [`Device`] keeps them in a sink that every poll drains, so a stage sees an error after
//! its own work, never a silently wrong result. A `Device` is a cheap handle: the GPU engine
//! and the spatial reducer share one (clones), so that the reducer can read the engine's
//! map buffers where they are.
use crate::error::{EngineError, Result};
use std::sync::{Arc, Mutex};
use wgpu::util::DeviceExt;

/// A device and its queue, with the adapter's description and limits.
#[derive(Clone)]
pub struct Device {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    /// wgpu's reports since the last poll, already typed.
    events: Arc<Mutex<Vec<EngineError>>>,
}

impl Device {
    /// Opens `adapter` with its own limits (the defaults are smaller) and `features`.
    pub fn open(adapter: &wgpu::Adapter, features: wgpu::Features, label: &str) -> Result<Device> {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some(label),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| EngineError::Unsupported(format!("cannot open {}: {e}", info.name)))?;
        let events: Arc<Mutex<Vec<EngineError>>> = Arc::default();
        let sink = events.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let msg = e.to_string();
            sink.lock().unwrap().push(match e {
                wgpu::Error::OutOfMemory { .. } => EngineError::OutOfMemory(msg),
                // Work this adapter refuses (a limit, a driver's compiler): another path.
                wgpu::Error::Validation { .. } | wgpu::Error::Internal { .. } => EngineError::Unsupported(msg),
            })
        }));
        let sink = events.clone();
        device.set_device_lost_callback(move |reason, msg| {
            sink.lock().unwrap().push(EngineError::DeviceLost(format!("device lost ({reason:?}): {msg}")));
        });
        let dev = Device { device, queue, info, limits, events };
        dev.poll("opening the device")?;
        Ok(dev)
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// The wgpu device, for stages (and tests) that make their own pipelines and buffers.
    pub fn wgpu(&self) -> &wgpu::Device {
        &self.device
    }

    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Whether the adapter is a software implementation (lavapipe, llvmpipe, WARP).
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// The largest buffer one storage binding may hold.
    pub fn binding_limit(&self) -> u64 {
        self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size)
    }

    /// Waits for all submitted work and returns the first error wgpu reported since the last
    /// poll (all of them in its message), typed; `what` says what was being done.
    pub fn poll(&self, what: &str) -> Result<()> {
        let polled = self.device.poll(wgpu::PollType::wait_indefinitely());
        let events: Vec<EngineError> = std::mem::take(&mut *self.events.lock().unwrap());
        if let Some(first) = events.first() {
            let all: Vec<&str> = events.iter().map(EngineError::message).collect();
            let msg = format!("{what} on {}: {}", self.info.name, all.join("; "));
            return Err(match first {
                EngineError::DeviceLost(_) => EngineError::DeviceLost(msg),
                EngineError::OutOfMemory(_) => EngineError::OutOfMemory(msg),
                EngineError::Unsupported(_) => EngineError::Unsupported(msg),
                EngineError::Invalid(_) => EngineError::Invalid(msg),
            });
        }
        polled.map_err(|e| EngineError::DeviceLost(format!("{what} on {}: {e}", self.info.name)))?;
        Ok(())
    }

    pub fn encoder(&self) -> wgpu::CommandEncoder {
        self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("voxflip") })
    }

    /// Submits without waiting: the GPU runs queued submissions back to back while the host
    /// encodes the next. Errors surface at the next [`Device::poll`].
    pub fn submit(&self, enc: wgpu::CommandEncoder) {
        self.queue.submit(Some(enc.finish()));
    }

    /// Submits and waits, returning any error of the work.
    pub fn submit_checked(&self, enc: wgpu::CommandEncoder, what: &str) -> Result<()> {
        self.submit(enc);
        self.poll(what)
    }

    /// A storage buffer holding `bytes` (a binding may not be empty: an empty one gets a word).
    pub fn storage_init(&self, label: &str, bytes: &[u8], extra: wgpu::BufferUsages) -> wgpu::Buffer {
        let pad = [0u8; 4];
        let contents = if bytes.is_empty() { &pad[..] } else { bytes };
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | extra,
        })
    }

    /// An uninitialised storage buffer of at least `bytes` (and at least 16) bytes.
    pub fn storage_empty(&self, label: &str, bytes: u64, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16),
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    /// A uniform buffer holding `bytes`.
    pub fn uniform_init(&self, label: &str, bytes: &[u8]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Finishes `enc` with copies of the first `bytes` of each of `parts` into one staging
    /// buffer, submits it and maps the result: one wait for a batch's dispatches and all its
    /// results. Returns the parts' bytes concatenated in order (each a multiple of 4).
    pub fn submit_and_read(
        &self,
        mut enc: wgpu::CommandEncoder,
        parts: &[(&wgpu::Buffer, u64)],
        what: &str,
    ) -> Result<Vec<u8>> {
        let total: u64 = parts.iter().map(|p| p.1).sum();
        if total == 0 {
            self.submit_checked(enc, what)?;
            return Ok(Vec::new());
        }
        let staging = self.staging(total);
        let mut at = 0;
        for &(buf, bytes) in parts {
            if bytes > 0 {
                enc.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
            }
            at += bytes;
        }
        self.submit(enc);
        self.map_staging(&staging, what)
    }

    /// Copies `bytes` bytes of `buf` from `offset` back to the host.
    pub fn read_back(&self, buf: &wgpu::Buffer, offset: u64, bytes: u64, what: &str) -> Result<Vec<u8>> {
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.staging(bytes);
        let mut enc = self.encoder();
        enc.copy_buffer_to_buffer(buf, offset, &staging, 0, bytes);
        self.submit(enc);
        self.map_staging(&staging, what)
    }

    fn staging(&self, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("staging"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `staging` (MAP_READ, its copies already submitted) and returns its bytes.
    fn map_staging(&self, staging: &wgpu::Buffer, what: &str) -> Result<Vec<u8>> {
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.poll(what)?;
        let failed = |why: String| EngineError::DeviceLost(format!("{what}: mapping the result {why}"));
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(format!("failed: {e}"))),
            Err(_) => return Err(failed("never completed".into())),
        }
        let data = slice.get_mapped_range().map_err(|e| failed(format!("failed: {e}")))?.to_vec();
        staging.unmap();
        Ok(data)
    }
}
