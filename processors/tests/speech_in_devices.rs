//! Device lookup against the real ALSA host (routed to PulseAudio by `scripts/pulse.sh start`).

#![allow(clippy::unwrap_used)] // a test: a failed unwrap is a failed test, with its line

mod speech_in_util;

use std::path::Path;
use std::process::Command;

use slowcat_processors::audio::MicSettings;
use slowcat_processors::audio::devices::{self, DeviceKind};
use slowcat_processors::registry::Settings;
use speech_in_util::build_context;

fn pulse_start() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pulse.sh");
    let out = Command::new(&script).arg("start").output().expect("cannot run scripts/pulse.sh");
    assert!(out.status.success(), "`scripts/pulse.sh start` failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn slowcat_devices_lists_inputs_and_outputs_with_the_default_marked() {
    pulse_start();
    let text = devices::list_devices().unwrap();
    println!("{text}");
    let input = text.find("input devices").expect("an input section");
    let output = text.find("output devices").expect("an output section");
    assert!(input < output);
    assert!(text[input..output].contains("* default"), "the default input is marked");
    assert!(text[output..].contains("* default"), "the default output is marked");
    assert!(text.contains("pulse (PulseAudio Sound Server)"), "devices show their description");
    // The default device opens (the daemon runs), so its native format is shown.
    assert!(text.contains("default input: default at "), "{text}");
}

#[test]
fn devices_are_found_by_id_name_or_a_unique_part() {
    for (wanted, id) in
        [("pulse", "pulse"), ("alsa:pulse", "pulse"), ("PulseAudio Sound Server", "pulse"), ("jack", "jack")]
    {
        let d = devices::find(DeviceKind::Output, wanted).unwrap_or_else(|e| panic!("{wanted}: {e}"));
        assert!(devices::describe(&d).starts_with(id), "{wanted} found {}", devices::describe(&d));
    }
    // "rate" is part of several plugin names.
    let e = devices::find(DeviceKind::Input, "rate").unwrap_err().to_string();
    assert!(e.contains("matches several") && e.contains("samplerate") && e.contains("speexrate"), "{e}");
}

#[test]
fn an_absent_microphone_names_the_devices_that_exist() {
    let settings = MicSettings { device: "USB Headset Mic".into(), ..Default::default() };
    let problems = settings.check(&build_context());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, Some("device"));
    let msg = &problems[0].message;
    println!("{msg}");
    assert!(msg.contains("no input device matches \"USB Headset Mic\""), "{msg}");
    assert!(msg.contains("input devices that exist: ") && msg.contains("pulse (PulseAudio Sound Server)"), "{msg}");
    assert!(msg.contains("slowcat devices"), "{msg}");
    let err = settings.check_and_build(&build_context()).err().expect("no such device, no mic").to_string();
    assert!(err.contains("USB Headset Mic") && err.contains("pulse"), "{err}");
}
