//! Finding audio devices by name, and listing them for `slowcat devices`.
//!
//! A device is named in config.toml either by its id on the host (ALSA: `default`, `pulse`,
//! `hw:CARD=0,DEV=0`; the `alsa:` prefix of cpal's device ids is accepted) or by its
//! description (`Discard all samples (playback) or generate zero samples (capture)`), compared
//! case-insensitively; a part of either is enough when it picks one device only. An empty name or
//! `default` means the host's default device.

use std::fmt;

use cpal::traits::{DeviceTrait, HostTrait};

/// Whether a device is wanted for capture or playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A microphone or another capture source.
    Input,
    /// A loudspeaker or another playback sink.
    Output,
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Input => "input",
            DeviceKind::Output => "output",
        })
    }
}

/// One device as `slowcat devices` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The host's id for it (what to put in config.toml).
    pub id: String,
    /// Its description, first line.
    pub name: String,
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() || self.name == self.id {
            write!(f, "{}", self.id)
        } else {
            write!(f, "{} ({})", self.id, self.name)
        }
    }
}

/// Why a device could not be found or opened.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No device of that kind matches the name.
    #[error("no {kind} device matches {wanted:?}; {}", available_list(*kind, available))]
    NotFound {
        /// Capture or playback.
        kind: DeviceKind,
        /// The name from the settings.
        wanted: String,
        /// Devices of that kind that do exist.
        available: Vec<DeviceInfo>,
    },
    /// Several devices match a partial name.
    #[error("{wanted:?} matches several {kind} devices: {}; give the full id", join(matches))]
    Ambiguous {
        /// Capture or playback.
        kind: DeviceKind,
        /// The name from the settings.
        wanted: String,
        /// The devices it matches.
        matches: Vec<DeviceInfo>,
    },
    /// The host has no default device of that kind.
    #[error("there is no default {kind} device; {}", available_list(*kind, available))]
    NoDefault {
        /// Capture or playback.
        kind: DeviceKind,
        /// Devices of that kind that do exist.
        available: Vec<DeviceInfo>,
    },
    /// The audio host itself failed (ALSA not usable).
    #[error("cannot list audio devices: {0}")]
    Host(#[from] cpal::Error),
}

fn join(devices: &[DeviceInfo]) -> String {
    devices.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
}

fn available_list(kind: DeviceKind, available: &[DeviceInfo]) -> String {
    if available.is_empty() {
        format!("no {kind} devices exist (is the sound server running? `scripts/pulse.sh start` starts one)")
    } else {
        format!("{kind} devices that exist: {} (see `slowcat devices`)", join(available))
    }
}

/// The host slowcat uses: the platform's default (ALSA on Linux).
pub fn host() -> cpal::Host {
    cpal::default_host()
}

fn info(device: &cpal::Device) -> DeviceInfo {
    let id = device.id().map(|id| id.id().to_string()).unwrap_or_default();
    let name = device.description().map(|d| d.name().to_string()).unwrap_or_default();
    DeviceInfo { id, name }
}

fn supports(device: &cpal::Device, kind: DeviceKind) -> bool {
    match kind {
        DeviceKind::Input => device.supports_input(),
        DeviceKind::Output => device.supports_output(),
    }
}

fn devices_of(host: &cpal::Host, kind: DeviceKind) -> Result<Vec<cpal::Device>, DeviceError> {
    Ok(host.devices()?.filter(|d| supports(d, kind)).collect())
}

/// The devices of one kind, in the host's order.
pub fn list(kind: DeviceKind) -> Result<Vec<DeviceInfo>, DeviceError> {
    Ok(devices_of(&host(), kind)?.iter().map(info).collect())
}

/// True when `name` means the host's default device.
pub fn is_default_name(name: &str) -> bool {
    let name = name.trim();
    name.is_empty() || name.eq_ignore_ascii_case("default")
}

/// Finds a device of `kind` by name (see the module doc); an empty name or `default` is the
/// host's default. Does not open the device.
pub fn find(kind: DeviceKind, name: &str) -> Result<cpal::Device, DeviceError> {
    let host = host();
    if is_default_name(name) {
        let default = match kind {
            DeviceKind::Input => host.default_input_device(),
            DeviceKind::Output => host.default_output_device(),
        };
        return default.ok_or_else(|| DeviceError::NoDefault {
            kind,
            available: devices_of(&host, kind).map(|d| d.iter().map(info).collect()).unwrap_or_default(),
        });
    }
    let devices = devices_of(&host, kind)?;
    let wanted = name.trim();
    // cpal writes device ids as `alsa:<id>`; accept that form too.
    let prefix = format!("{}:", host.id().name().to_lowercase());
    let bare = match wanted.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(&prefix) => &wanted[prefix.len()..],
        _ => wanted,
    };
    let infos: Vec<DeviceInfo> = devices.iter().map(info).collect();
    let pick = |pred: &dyn Fn(&DeviceInfo) -> bool| -> Vec<usize> {
        infos.iter().enumerate().filter(|(_, d)| pred(d)).map(|(i, _)| i).collect()
    };
    let lower = bare.to_lowercase();
    // Exact id first (ids are unique), then the exact description, then a unique part of either.
    let mut hits = pick(&|d| d.id == bare);
    if hits.is_empty() {
        hits = pick(&|d| d.name.eq_ignore_ascii_case(bare));
    }
    if hits.is_empty() {
        hits = pick(&|d| d.id.to_lowercase().contains(&lower) || d.name.to_lowercase().contains(&lower));
    }
    match hits.as_slice() {
        [i] => Ok(devices.into_iter().nth(*i).expect("index from the same list")),
        [] => Err(DeviceError::NotFound { kind, wanted: wanted.to_string(), available: infos }),
        many => Err(DeviceError::Ambiguous {
            kind,
            wanted: wanted.to_string(),
            matches: many.iter().map(|&i| infos[i].clone()).collect(),
        }),
    }
}

/// Finds a capture device; see [`find`].
pub fn find_input(name: &str) -> Result<cpal::Device, DeviceError> {
    find(DeviceKind::Input, name)
}

/// Finds a playback device; see [`find`].
pub fn find_output(name: &str) -> Result<cpal::Device, DeviceError> {
    find(DeviceKind::Output, name)
}

/// The device's id and description, for logs and error messages.
pub fn describe(device: &cpal::Device) -> String {
    info(device).to_string()
}

/// The text `slowcat devices` prints: input and output devices with their default stream
/// configuration where the device can be opened.
pub fn list_devices() -> Result<String, DeviceError> {
    use std::fmt::Write as _;
    // Writing to a String cannot fail, so the results of `writeln!` are dropped.
    let host = host();
    let mut out = String::new();
    let _ = writeln!(out, "audio host: {}", host.id().name());
    for kind in [DeviceKind::Input, DeviceKind::Output] {
        let default = match kind {
            DeviceKind::Input => host.default_input_device(),
            DeviceKind::Output => host.default_output_device(),
        };
        let default_id = default.as_ref().map(|d| info(d).id);
        let _ = writeln!(out, "\n{kind} devices (the `device` setting takes the id or the name):");
        let devices = devices_of(&host, kind)?;
        if devices.is_empty() {
            let _ = writeln!(out, "  (none; is the sound server running?)");
        }
        for device in &devices {
            let i = info(device);
            let mark = if default_id.as_deref() == Some(i.id.as_str()) { "*" } else { " " };
            let _ = writeln!(out, "{mark} {i}");
        }
        if let Some(device) = &default {
            let config = match kind {
                DeviceKind::Input => device.default_input_config(),
                DeviceKind::Output => device.default_output_config(),
            };
            let _ = match config {
                Ok(c) => writeln!(
                    out,
                    "  default {kind}: {} at {} Hz, {} channel(s), {}",
                    info(device).id,
                    c.sample_rate(),
                    c.channels(),
                    c.sample_format()
                ),
                Err(e) => writeln!(out, "  default {kind}: {} cannot be opened: {e}", info(device).id),
            };
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_names_the_devices_that_exist() {
        let e = DeviceError::NotFound {
            kind: DeviceKind::Input,
            wanted: "usb mic".into(),
            available: vec![
                DeviceInfo { id: "default".into(), name: "Default Audio Device".into() },
                DeviceInfo { id: "pulse".into(), name: "pulse".into() },
            ],
        };
        let msg = e.to_string();
        assert!(msg.contains("\"usb mic\""), "{msg}");
        assert!(msg.contains("default (Default Audio Device), pulse"), "{msg}");
    }

    #[test]
    fn default_names() {
        assert!(is_default_name(""));
        assert!(is_default_name(" Default "));
        assert!(!is_default_name("pulse"));
    }
}
