//! OpenCL platforms and devices: listing them (`nnc devices`), choosing
//! one (`--device N`, `NNC_OPENCL_DEVICE`, else the first GPU, else the
//! first device), and the process's one context and in-order queue on it.
//!
//! Asking for the platforms is done in two steps: first the count through
//! `clGetPlatformIDs` itself, which answers at once when no driver is
//! registered (the loader's "no platform" error, −1001); only then through
//! `ocl`, whose listing panics, or waits seconds, without a platform.

use crate::exec::Error;
use ocl::core::ffi;
use ocl::enums::{DeviceInfo, DeviceInfoResult};
use ocl::{flags::DeviceType, Context, Device, Platform, Queue};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// One device, as `nnc devices` lists it.
#[derive(Clone, Debug)]
pub struct DeviceSummary {
    pub index: usize,
    pub platform: String,
    pub name: String,
    pub kind: String,
    pub compute_units: u32,
    pub global_mem: u64,
    pub max_alloc: u64,
    pub version: String,
    pub driver: String,
}

/// The device this process runs OpenCL programs on, with its context and
/// queue.
pub struct Gpu {
    pub summary: DeviceSummary,
    pub device: Device,
    pub context: Context,
    pub queue: Queue,
}

fn no_platform() -> Error {
    Error::Device {
        message: "no OpenCL platform is installed".into(),
        help: "install an OpenCL driver: `apt-get install pocl-opencl-icd` runs kernels on the CPU; for an NVIDIA GPU whose driver is installed, register its ICD (`echo libnvidia-opencl.so.1 > /etc/OpenCL/vendors/nvidia.icd`, or in a folder that OCL_ICD_VENDORS names)".into(),
    }
}

fn ocl_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device {
        message: format!("OpenCL: {what}: {e}"),
        help: "`nnc devices` lists the devices OpenCL finds; `--backend jit` runs on the CPU without OpenCL".into(),
    }
}

/// The platforms, or the no-platform error within milliseconds.
fn platforms() -> Result<Vec<Platform>, Error> {
    let mut count: ffi::cl_uint = 0;
    // SAFETY: asks only for the count, into a live local.
    let status = unsafe { ffi::clGetPlatformIDs(0, std::ptr::null_mut(), &mut count) };
    if status != 0 || count == 0 {
        return Err(no_platform());
    }
    let ids = ocl::core::get_platform_ids().map_err(|_| no_platform())?;
    Ok(ids.into_iter().map(Platform::new).collect())
}

fn text(d: &Device, what: DeviceInfo) -> String {
    d.info(what).map(|r| r.to_string()).unwrap_or_default()
}

fn summary(index: usize, platform: &Platform, d: &Device) -> DeviceSummary {
    let kind = match d.info(DeviceInfo::Type) {
        Ok(DeviceInfoResult::Type(t)) if t.contains(DeviceType::GPU) => "GPU",
        Ok(DeviceInfoResult::Type(t)) if t.contains(DeviceType::CPU) => "CPU",
        Ok(DeviceInfoResult::Type(t)) if t.contains(DeviceType::ACCELERATOR) => "accelerator",
        _ => "other",
    };
    let compute_units = match d.info(DeviceInfo::MaxComputeUnits) {
        Ok(DeviceInfoResult::MaxComputeUnits(n)) => n,
        _ => 0,
    };
    let global_mem = match d.info(DeviceInfo::GlobalMemSize) {
        Ok(DeviceInfoResult::GlobalMemSize(n)) => n,
        _ => 0,
    };
    let max_alloc = match d.info(DeviceInfo::MaxMemAllocSize) {
        Ok(DeviceInfoResult::MaxMemAllocSize(n)) => n,
        _ => 0,
    };
    DeviceSummary {
        index,
        platform: platform.name().unwrap_or_default(),
        name: text(d, DeviceInfo::Name),
        kind: kind.into(),
        compute_units,
        global_mem,
        max_alloc,
        version: text(d, DeviceInfo::Version),
        driver: text(d, DeviceInfo::DriverVersion),
    }
}

/// Every device of every platform, numbered across platforms.
pub fn list() -> Result<Vec<(Platform, Device, DeviceSummary)>, Error> {
    let mut out = Vec::new();
    for p in platforms()? {
        let devices = Device::list_all(p).map_err(|e| ocl_error("listing devices", e))?;
        for d in devices {
            let s = summary(out.len(), &p, &d);
            out.push((p, d, s));
        }
    }
    Ok(out)
}

/// `nnc devices`: one line per device.
pub fn describe() -> Result<String, Error> {
    let list = list()?;
    let mut s = String::new();
    for (_, _, d) in &list {
        s.push_str(&format!(
            "{}: {} ({}) on {}: {} compute units, {} of memory, {}\n",
            d.index,
            d.name,
            d.kind,
            d.platform,
            d.compute_units,
            crate::exec::memory::human(d.global_mem),
            d.version,
        ));
    }
    if list.is_empty() {
        s.push_str("no OpenCL device\n");
    }
    Ok(s)
}

/// `--device N`, set by the driver before the first program compiles.
static CHOSEN: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Chooses the device by its index in [`list`] (`--device N`).
pub fn choose(index: usize) {
    CHOSEN.store(index, Ordering::Relaxed);
}

/// This worker's number among the data-parallel workers of its machine
/// ([`super::share_devices`]); `usize::MAX` when it is not one.
static WORKER: AtomicUsize = AtomicUsize::new(usize::MAX);

pub fn share(local: usize) {
    WORKER.store(local, Ordering::Relaxed);
}

/// The device a process takes when none was chosen: the first GPU, else
/// the first device; as the `worker`-th worker of its machine, the
/// (worker mod G)-th of the G GPUs.
fn default_device(kinds: &[&str], worker: Option<usize>) -> usize {
    let gpus: Vec<usize> = (0..kinds.len()).filter(|&i| kinds[i] == "GPU").collect();
    match (gpus.is_empty(), worker) {
        (true, _) => 0,
        (false, Some(w)) => gpus[w % gpus.len()],
        (false, None) => gpus[0],
    }
}

fn chosen() -> Result<Option<usize>, Error> {
    let n = CHOSEN.load(Ordering::Relaxed);
    if n != usize::MAX {
        return Ok(Some(n));
    }
    match std::env::var("NNC_OPENCL_DEVICE") {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| Error::Device {
            message: format!("NNC_OPENCL_DEVICE is `{v}`, not a device number"),
            help: "`nnc devices` lists the devices and their numbers".into(),
        }),
        Err(_) => Ok(None),
    }
}

/// The process's device, context and queue, set up on first use.
pub fn gpu() -> Result<&'static Gpu, Error> {
    static GPU: OnceLock<Result<Gpu, Error>> = OnceLock::new();
    GPU.get_or_init(open).as_ref().map_err(Clone::clone)
}

fn open() -> Result<Gpu, Error> {
    let list = list()?;
    if list.is_empty() {
        return Err(Error::Device {
            message: "OpenCL finds no device".into(),
            help: "check the driver's installation (`clinfo` lists what it sees)".into(),
        });
    }
    let at = match chosen()? {
        Some(n) if n < list.len() => n,
        Some(n) => {
            return Err(Error::Device {
                message: format!(
                    "there is no OpenCL device {n}; there are {} (0 to {})",
                    list.len(),
                    list.len() - 1
                ),
                help: "`nnc devices` lists them".into(),
            })
        }
        None => {
            let kinds: Vec<&str> = list.iter().map(|(_, _, s)| s.kind.as_str()).collect();
            let worker = Some(WORKER.load(Ordering::Relaxed)).filter(|&w| w != usize::MAX);
            default_device(&kinds, worker)
        }
    };
    let (platform, device, summary) = list[at].clone();
    let context = Context::builder()
        .platform(platform)
        .devices(device)
        .build()
        .map_err(|e| ocl_error("creating a context", e))?;
    let queue = Queue::new(&context, device, None).map_err(|e| ocl_error("creating a queue", e))?;
    crate::log::lines(
        "opencl",
        &[format!(
            "device {}: {} ({})",
            summary.index, summary.name, summary.platform
        )],
    );
    Ok(Gpu {
        summary,
        device,
        context,
        queue,
    })
}

#[cfg(test)]
mod tests {
    use super::default_device;

    #[test]
    fn workers_of_one_machine_take_its_gpus_in_turn() {
        let kinds = ["CPU", "GPU", "GPU"];
        assert_eq!(default_device(&kinds, None), 1);
        let taken: Vec<usize> = (0..5).map(|w| default_device(&kinds, Some(w))).collect();
        assert_eq!(taken, [1, 2, 1, 2, 1]);
        // Without a GPU every worker shares the first device.
        assert_eq!(default_device(&["CPU", "Accelerator"], Some(3)), 0);
        assert_eq!(default_device(&["CPU"], None), 0);
    }
}
