//! `station-directory`: the hot-desk picker's read against a big
//! directory. Registers S stations in the tenant (1000 per call), claims
//! H of them (every (S/H)-th, so held stations are spread through the
//! name order), then pages through the free ones, P per page, R times
//! over: the latency of one ListStations page (free-only, so each page
//! also skips the held stations on its way) is what is reported.
//!
//! Run it against a fresh tenant (`--tenant`): the directory is left in
//! place and the held sessions are released at the end.

use std::time::Instant;

use turnstile_client::pb::{self, ClaimOutcome, ConflictPolicy};

use crate::report::{Latency, Report};
use crate::scenarios::{classify, finish, threads, Target};
use crate::sys;

/// What to build and read.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Stations registered.
    pub stations: usize,
    /// Stations held by a live session.
    pub held: usize,
    /// Stations per page.
    pub page_size: u32,
    /// Times the whole free list is paged through.
    pub rounds: usize,
}

/// Runs the scenario.
pub async fn station_directory(t: &Target, plan: &Plan) -> Report {
    let mut report = Report::new("station-directory");
    report.param("stations", plan.stations);
    report.param("held", plan.held);
    report.param("page_size", plan.page_size);
    report.param("rounds", plan.rounds);
    t.describe(&mut report);
    let brokers = match t.brokers().await {
        Ok(b) => b,
        Err(e) => {
            report.error(&classify(&e));
            return report;
        }
    };
    let cpu0 = sys::cpu_time("self");
    let started = Instant::now();
    let names: Vec<String> = (0..plan.stations)
        .map(|i| format!("{}-desk-{i:06}", t.run))
        .collect();
    let mut b = brokers[0].clone();
    let mut register = Latency::default();
    for chunk in names.chunks(1000) {
        let sent = Instant::now();
        match b.register_stations(&t.tenant, chunk.to_vec()).await {
            Ok(_) => register.record(sent.elapsed()),
            Err(e) => report.error(&classify(&e)),
        }
    }
    report.latency("register_1000", &register);

    // Hold every (S/H)-th station, spread over the nodes.
    let step = (plan.stations / plan.held.max(1)).max(1);
    let mut held = Vec::new();
    for (n, i) in (0..plan.stations).step_by(step).take(plan.held).enumerate() {
        let mut b = brokers[n % brokers.len()].clone();
        let req = pb::ClaimRequest {
            tenant: t.tenant.clone(),
            login: format!("{}-a{i}", t.run),
            station: names[i].clone(),
            client: "loadtest".into(),
            role: "agent".into(),
            on_conflict: ConflictPolicy::Reject as i32,
            ..Default::default()
        };
        match b.claim(req).await {
            Ok(r) if r.outcome() == ClaimOutcome::Granted => {
                held.extend(r.session.map(|s| s.session_id));
            }
            Ok(r) => report.error(&format!("claim_{:?}", r.outcome()).to_lowercase()),
            Err(e) => report.error(&classify(&e)),
        }
    }
    report.count("held", held.len() as u64);

    // Page through the free stations, `rounds` times, round-robin over the nodes.
    let mut page = Latency::default();
    let (mut pages, mut listed) = (0u64, 0u64);
    let prefix = format!("{}-desk-", t.run);
    for round in 0..plan.rounds {
        let mut token = String::new();
        // Bounded: a page examines at least one name.
        for p in 0..plan.stations + 1 {
            let mut b = brokers[(round + p) % brokers.len()].clone();
            let req = pb::ListStationsRequest {
                tenant: t.tenant.clone(),
                prefix: prefix.clone(),
                free_only: true,
                page_size: plan.page_size,
                page_token: token,
            };
            let sent = Instant::now();
            match b.list_stations(req).await {
                Ok(r) => {
                    page.record(sent.elapsed());
                    pages += 1;
                    listed += r.stations.len() as u64;
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    token = r.next_page_token;
                }
                Err(e) => {
                    report.error(&classify(&e));
                    break;
                }
            }
        }
    }
    report.latency("list_free_page", &page);
    report.count("pages", pages);
    report.count("free_listed", listed);
    let expected = (plan.stations - held.len()) as u64 * plan.rounds as u64;
    if listed != expected {
        report.violations.push(format!(
            "listed {listed} free stations over {} rounds, expected {expected}",
            plan.rounds
        ));
    }

    for (n, id) in held.iter().enumerate() {
        let mut b = brokers[n % brokers.len()].clone();
        if let Err(e) = b.release(&t.tenant, id).await {
            report.error(&classify(&e));
        }
    }
    finish(&mut report, started, cpu0, threads());
    report
}
