use std::{path::Path, process::ExitCode};

use super::{Output, exit, fail};
use crate::{
    api::{self, Request, Response},
    dataplane::ServiceStatus,
};

pub fn status(socket: &Path, only: Option<&str>, output: Output) -> ExitCode {
    let response = match api::call(socket, &Request::Status) {
        Ok(r) => r,
        Err(e) => return fail(exit::UNAVAILABLE, &e),
    };
    let Response::Status {
        version,
        cgroup,
        pin_dir,
        config,
        mut services,
    } = response
    else {
        eprintln!("sluice: unexpected response {response:?}");
        return ExitCode::from(exit::SOFTWARE);
    };
    if let Some(name) = only {
        services.retain(|s| s.name == name);
        if services.is_empty() {
            eprintln!("sluice: no service named {name:?}");
            return ExitCode::from(exit::USAGE);
        }
    }
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "version": version, "cgroup": cgroup, "pin_dir": pin_dir,
                "config": config, "services": services,
            });
            println!("{doc:#}");
        }
        Output::Table => {
            println!("sluice {version}  cgroup {cgroup}  pins {pin_dir}  config {config}");
            println!();
            print!("{}", table(&services));
        }
    }
    ExitCode::SUCCESS
}

fn table(services: &[ServiceStatus]) -> String {
    let mut rows = vec![
        [
            "SERVICE",
            "ADDRESSES",
            "MODE",
            "CANARY%",
            "CONFIG%",
            "STABLE",
            "CANARY",
            "->STABLE",
            "->CANARY",
            "MEASURED%",
            "FALLBACKS",
        ]
        .map(String::from),
    ];
    for s in services {
        let c = |k: &str| s.counters.get(k).copied().unwrap_or(0);
        rows.push([
            s.name.clone(),
            s.virtual_addresses.join(","),
            if s.segmented {
                format!("{}+segment", s.selection)
            } else {
                s.selection.clone()
            },
            format!("{}", s.canary_percent),
            format!("{}", s.config_canary_percent),
            s.stable.join(","),
            if s.canary.is_empty() {
                "-".into()
            } else {
                s.canary.join(",")
            },
            c("steered_stable").to_string(),
            c("steered_canary").to_string(),
            s.measured_canary_percent
                .map_or("-".into(), |p| format!("{p:.2}")),
            (c("canary_empty_fallback")
                + c("no_backend")
                + c("slot_missing")
                + c("family_mismatch"))
            .to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}
