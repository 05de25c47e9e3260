//! The network boundary of a Docker sandbox, end to end: from inside a busybox
//! sandbox made by `warren-runner run --backend docker`, the runner host itself (its
//! bridge gateway address, its primary address), link-local addresses (the
//! 169.254.170.2 credentials endpoint of container platforms) and other sandboxes are
//! unreachable under the default policy; an allow-listed host TCP port, and only that
//! port, is reachable; `remove` leaves no rule behind. In CI a missing engine is a
//! failure, not a skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use warren_keys::SandboxId;
use warren_runner::netpolicy::{self, FORWARD_CHAIN, HOST_CHAIN, HostAccess, jump_line};
use warren_runner::protocol::{NetworkPolicy, Request, Response, SandboxSpec};
use warren_tests::stack::{DockerStack, network_of};
use warren_tests::util::wait_until;
use warren_tests::{Client, Cmd};

const BUSYBOX: &str = "warren-busybox:latest";
/// Where container platforms (ECS) serve task credentials.
const LINK_LOCAL: &str = "169.254.170.2";
const DUMMY: &str = "warren-ll0";

fn run(program: &str, args: &[&str]) -> Result<warren_tests::Output> {
    Cmd::new(program)
        .args(args.iter().copied())
        .timeout(Duration::from_secs(120))
        .run()
}

fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    Ok(run(program, args)?.success()?.stdout_trimmed().to_owned())
}

/// A busybox sandbox of `d`'s.
fn busybox(d: &DockerStack) -> Result<(SandboxId, Client)> {
    d.sandbox(SandboxSpec {
        image: Some(BUSYBOX.into()),
        ..SandboxSpec::default()
    })
}

/// Replaces a sandbox's rules as the runner would with this policy and host access.
fn apply(d: &DockerStack, id: &SandboxId, policy: &NetworkPolicy, host: &HostAccess) -> Result<()> {
    d.stack.rt.block_on(netpolicy::apply(id, policy, host))
}

/// A link-local address on the host, as a container platform's credentials endpoint
/// would have: on a dummy interface, or on `lo` where the kernel has no dummy
/// interfaces; removed when dropped.
struct LinkLocal {
    dummy: bool,
}

impl LinkLocal {
    fn add() -> Result<LinkLocal> {
        let _ = run("ip", &["link", "del", DUMMY]);
        let address = format!("{LINK_LOCAL}/32");
        let _ = run("ip", &["addr", "del", &address, "dev", "lo"]);
        let dummy = run("ip", &["link", "add", DUMMY, "type", "dummy"])?.code() == Some(0);
        let made = LinkLocal { dummy };
        if dummy {
            run_ok("ip", &["addr", "add", &address, "dev", DUMMY])?;
            run_ok("ip", &["link", "set", DUMMY, "up"])?;
        } else {
            eprintln!("note: no dummy interfaces in this kernel; {address} goes on lo");
            run_ok("ip", &["addr", "add", &address, "dev", "lo"])?;
        }
        Ok(made)
    }
}

impl Drop for LinkLocal {
    fn drop(&mut self) {
        if self.dummy {
            let _ = run("ip", &["link", "del", DUMMY]);
        } else {
            let _ = run(
                "ip",
                &["addr", "del", &format!("{LINK_LOCAL}/32"), "dev", "lo"],
            );
        }
    }
}

/// A tiny HTTP server on the host, answering every request with `body`; it lives as
/// long as the test process.
fn host_server(bind: &str, body: &'static str) -> Result<u16> {
    let listener = TcpListener::bind(bind).with_context(|| format!("binding {bind}"))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(port)
}

/// Fetches each URL from inside the sandbox, all at once (each drop costs a
/// timeout), and tells which answered with the body expected of it. (Not `wget -T`:
/// Debian's static busybox 1.35 crashes with it.)
fn reachable(c: &Client, probes: &[(&str, String, &str)]) -> Result<BTreeMap<String, bool>> {
    let mut script = String::new();
    for (name, url, body) in probes {
        script.push_str(&format!(
            "( if timeout 4 wget -q -O - {url} 2>/dev/null | grep -qx {body}; \
             then echo {name}=yes; else echo {name}=no; fi ) & "
        ));
    }
    script.push_str("wait");
    let out = c
        .exec(&script)
        .run()?
        .success()
        .context("probing from the sandbox")?;
    let mut seen = BTreeMap::new();
    for line in out.stdout_str().lines() {
        if let Some((name, answer)) = line.split_once('=') {
            seen.insert(name.to_owned(), answer == "yes");
        }
    }
    for (name, ..) in probes {
        ensure!(seen.contains_key(*name), "no answer for {name}:\n{out}");
    }
    Ok(seen)
}

/// Fails unless exactly the probes named in `yes` were reachable.
fn expect(seen: &BTreeMap<String, bool>, yes: &[&str], phase: &str) -> Result<()> {
    let wrong: Vec<String> = seen
        .iter()
        .filter(|(name, ok)| **ok != yes.contains(&name.as_str()))
        .map(|(name, ok)| {
            if *ok {
                format!("{name} reached")
            } else {
                format!("{name} not reached")
            }
        })
        .collect();
    ensure!(
        wrong.is_empty(),
        "{phase}: {}; all: {seen:?}",
        wrong.join(", ")
    );
    Ok(())
}

fn container_ip(id: &SandboxId) -> Result<String> {
    let ip = run_ok(
        "docker",
        &[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &format!("warren-{id}"),
        ],
    )?;
    ensure!(!ip.is_empty(), "sandbox {id} has no address");
    Ok(ip)
}

/// The id sandbox `id`'s network and firewall chains are named after: its own, or
/// the slot of the spare network (or pool member) it was made on.
fn rules_id(id: &SandboxId) -> Result<SandboxId> {
    let network = network_of(id)?;
    SandboxId::parse(network.trim_start_matches("warren-"))
        .with_context(|| format!("sandbox {id}'s network {network:?}"))
}

fn gateway_ip(id: &SandboxId) -> Result<String> {
    let ip = run_ok(
        "docker",
        &[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.Gateway}}{{end}}",
            &format!("warren-{id}"),
        ],
    )?;
    ensure!(!ip.is_empty(), "sandbox {id}'s network has no gateway");
    Ok(ip)
}

/// The host's primary address: the source of its default route, else the first of
/// `hostname -I`.
fn primary_ip() -> Result<String> {
    if let Ok(route) = run_ok("ip", &["-4", "route", "get", "1.1.1.1"]) {
        let words: Vec<&str> = route.split_whitespace().collect();
        if let Some(w) = words.windows(2).find(|w| w[0] == "src") {
            return Ok(w[1].to_owned());
        }
    }
    let all = run_ok("hostname", &["-I"])?;
    all.split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|a| !a.is_loopback())
        })
        .map(str::to_owned)
        .context("the host has no IPv4 address of its own")
}

fn rules(program: &str) -> String {
    run_ok(program, &["-w", "-S"]).unwrap_or_default()
}

#[test]
fn default_policy_keeps_sandboxes_off_the_host_link_local_and_each_other() -> Result<()> {
    let Some(d) = DockerStack::start(&[])? else {
        return Ok(());
    };
    let _ll = LinkLocal::add()?;
    let open = host_server("0.0.0.0:0", "host-open")?;
    let closed = host_server("0.0.0.0:0", "host-closed")?;
    let ll_port = host_server(&format!("{LINK_LOCAL}:0"), "link-local")?;
    let primary = primary_ip()?;
    ensure!(
        std::net::TcpStream::connect((primary.as_str(), open)).is_ok(),
        "the host's own server does not answer on {primary}:{open}"
    );

    let (a_id, a) = busybox(&d)?;
    let (b_id, b) = busybox(&d)?;
    let gw = gateway_ip(&a_id)?;
    let (a_rules, b_rules) = (rules_id(&a_id)?, rules_id(&b_id)?);
    let b_ip = container_ip(&b_id)?;
    ensure!(gw != primary, "the bridge gateway is the primary address");

    // Sandbox B serves a page on all its addresses.
    let server = b
        .exec("cd /workspace && echo sandbox-b > index.html && exec httpd -f -p 8000 -h .")
        .spawn()?;
    let b_name = format!("warren-{b_id}");
    ensure!(
        wait_until(Duration::from_secs(20), || {
            reachable(
                &b,
                &[("own", format!("http://{b_ip}:8000/index.html"), "sandbox-b")],
            )
            .is_ok_and(|s| s["own"])
        }),
        "sandbox B's own server never answered"
    );
    // Docker's embedded DNS (127.0.0.11, in the container's own namespace) still
    // answers with INPUT dropped: B finds itself by name.
    let seen = reachable(
        &b,
        &[(
            "by_name",
            format!("http://{b_name}:8000/index.html"),
            "sandbox-b",
        )],
    )?;
    expect(&seen, &["by_name"], "name resolution in B")?;

    let probes = |host_b: bool| {
        let mut p = vec![
            ("gw_open", format!("http://{gw}:{open}/"), "host-open"),
            ("gw_closed", format!("http://{gw}:{closed}/"), "host-closed"),
            (
                "primary_open",
                format!("http://{primary}:{open}/"),
                "host-open",
            ),
            (
                "primary_closed",
                format!("http://{primary}:{closed}/"),
                "host-closed",
            ),
            (
                "link_local",
                format!("http://{LINK_LOCAL}:{ll_port}/"),
                "link-local",
            ),
            (
                "link_local_open",
                format!("http://{LINK_LOCAL}:{open}/"),
                "host-open",
            ),
        ];
        if host_b {
            p.push((
                "sandbox_b",
                format!("http://{b_ip}:8000/index.html"),
                "sandbox-b",
            ));
        }
        p
    };

    // (a), (b), (c): the default policy, as the runner applied it.
    let seen = reachable(&a, &probes(true))?;
    expect(&seen, &[], "default policy")?;

    // (d): one host port allow-listed: that port on the host's own addresses, not
    // another port, not link-local, not B.
    let host = HostAccess {
        tcp_ports: vec![open],
    };
    apply(&d, &a_rules, &NetworkPolicy::All, &host)?;
    let seen = reachable(&a, &probes(true))?;
    expect(
        &seen,
        &["gw_open", "primary_open"],
        "default policy, host port allowed",
    )?;

    // An allow-list covering everything still keeps the host (but the allowed port)
    // and link-local out.
    let everything = NetworkPolicy::Allow {
        cidrs: vec!["0.0.0.0/0".into()],
    };
    apply(&d, &a_rules, &everything, &HostAccess::default())?;
    let seen = reachable(&a, &probes(false))?;
    expect(&seen, &[], "allow 0.0.0.0/0")?;
    apply(&d, &a_rules, &everything, &host)?;
    let seen = reachable(&a, &probes(false))?;
    expect(
        &seen,
        &["gw_open", "primary_open"],
        "allow 0.0.0.0/0, host port allowed",
    )?;

    // In place: each shared jump first in its parent, and A's goto to its own host
    // chain (it has a host port and an allow-list now).
    let short = a_rules.as_str().trim_start_matches("sbx-").to_owned();
    let a_chain = format!("WARREN-{short}");
    let v6 = run("ip6tables", &["-w", "-n", "-L", "INPUT"]).is_ok_and(|o| o.code() == Some(0));
    for (program, present) in [("iptables", true), ("ip6tables", v6)] {
        if !present {
            eprintln!("note: ip6tables unavailable here; no IPv6 rules to check");
            continue;
        }
        let listing = rules(program);
        let first_in_input = listing.lines().find(|l| l.starts_with("-A INPUT "));
        ensure!(
            first_in_input == Some(jump_line("INPUT", HOST_CHAIN).as_str()),
            "{program}: the shared jump is not first in INPUT:\n{listing}"
        );
        let goto = format!("-A {HOST_CHAIN} -i wr-{short} -g {a_chain}-H");
        ensure!(
            listing.contains(&goto),
            "{program}: no {goto:?}:\n{listing}"
        );
    }

    // The shared chains alone, A's own removed: everything dropped again.
    d.stack.rt.block_on(netpolicy::remove(&a_rules));
    for program in ["iptables", "ip6tables"] {
        let left = rules(program);
        ensure!(
            !left.contains(&a_chain),
            "{program} rules left by remove:\n{left}"
        );
    }
    let seen = reachable(&a, &probes(false))?;
    expect(&seen, &[], "the shared chains alone")?;

    // The control: A's bridge passed back from both shared chains, what they dropped
    // answers (when the host's own firewall lets it), so the drops are the rules' doing.
    if rules("iptables").lines().next() == Some("-P INPUT ACCEPT") {
        let bridge = format!("wr-{short}");
        // A goto to an empty chain passes the packet back to the shared chain's
        // parent. A goto, not a `-j RETURN`: another test's create may mend the
        // shared chains meanwhile, which keeps gotos and drops rules it does not know.
        let pass = format!("WTEST-{short}");
        let bypass = |op: &str| {
            for chain in [HOST_CHAIN, FORWARD_CHAIN] {
                let mut args = vec!["-w", op, chain];
                if op == "-I" {
                    args.push("1");
                }
                args.extend(["-i", bridge.as_str(), "-g", pass.as_str()]);
                run_ok("iptables", &args)?;
            }
            anyhow::Ok(())
        };
        run_ok("iptables", &["-w", "-N", &pass])?;
        bypass("-I")?;
        let seen = reachable(&a, &probes(false));
        bypass("-D")?;
        run_ok("iptables", &["-w", "-X", &pass])?;
        expect(
            &seen?,
            &[
                "gw_open",
                "gw_closed",
                "primary_open",
                "primary_closed",
                "link_local",
                "link_local_open",
            ],
            "A's bridge passed back (the control)",
        )?;
    } else {
        eprintln!("note: the host's INPUT policy is not ACCEPT; the control is skipped");
    }
    // remove is idempotent.
    d.stack.rt.block_on(netpolicy::remove(&a_rules));

    // Deleting a sandbox removes every rule of its own, IPv4 and IPv6.
    let b_chain = format!("WARREN-{}", b_rules.as_str().trim_start_matches("sbx-"));
    let allow_list = NetworkPolicy::Allow {
        cidrs: vec!["10.99.0.0/16".into()],
    };
    apply(&d, &b_rules, &allow_list, &HostAccess::default())?;
    ensure!(rules("iptables").contains(&b_chain), "B has no rules");
    let _ = server.kill();
    for id in [&a_id, &b_id] {
        let out = d.control(Request::Delete {
            sandbox: (*id).clone(),
        })?;
        if out != Response::Ok {
            bail!("delete {id}: {out:?}");
        }
    }
    for program in ["iptables", "ip6tables"] {
        let left = rules(program);
        ensure!(
            !left.contains(&a_chain) && !left.contains(&b_chain),
            "{program} rules left after delete:\n{left}"
        );
    }
    Ok(())
}

/// A create with an allow-list made on a spare network (made ahead with the default
/// policy's rules) gets the allow-list's rules before it starts, not the default's,
/// as one made after it does (cold, or on the spare made again meanwhile).
#[test]
fn an_allow_list_replaces_a_spare_networks_default_rules() -> Result<()> {
    let Some(d) = DockerStack::start(&["--spare-networks", "1"])? else {
        return Ok(());
    };
    let spare = format!("label=org.warren.runner={}", d.runner.id);
    ensure!(
        wait_until(Duration::from_secs(60), || {
            run_ok(
                "docker",
                &[
                    "network",
                    "ls",
                    "--filter",
                    &spare,
                    "--filter",
                    "label=org.warren.pool=spare",
                    "--format",
                    "{{.Label \"org.warren.sandbox\"}}",
                ],
            )
            // Listed a moment before the runner offers it.
            .is_ok_and(|slots| {
                slots
                    .split_whitespace()
                    .any(|slot| d.runner_logged("spare network ready", slot))
            })
        }),
        "no spare network was made:\n{}",
        d.runner_log()
    );
    let closed = host_server("0.0.0.0:0", "host-closed")?;
    let allow = || SandboxSpec {
        image: Some(BUSYBOX.into()),
        network: NetworkPolicy::Allow {
            cidrs: vec!["10.99.0.0/16".into()],
        },
        ..SandboxSpec::default()
    };
    // The first takes the spare.
    let (on_spare, a) = d.sandbox(allow())?;
    let (cold, b) = d.sandbox(allow())?;
    let spare_slot = rules_id(&on_spare)?;
    ensure!(
        spare_slot != on_spare,
        "the first create did not take the spare"
    );
    for (id, c, slot) in [(&on_spare, &a, spare_slot), (&cold, &b, rules_id(&cold)?)] {
        let chain = format!("WARREN-{}", slot.as_str().trim_start_matches("sbx-"));
        let listing = rules("iptables");
        for rule in [
            format!("-A {chain} -d 10.99.0.0/16 -j RETURN"),
            format!("-A {chain} -j DROP"),
        ] {
            ensure!(
                listing.lines().any(|l| l == rule),
                "{id}: no {rule:?} in:\n{listing}"
            );
        }
        let gw = gateway_ip(id)?;
        let seen = reachable(
            c,
            &[("gw_closed", format!("http://{gw}:{closed}/"), "host-closed")],
        )?;
        expect(&seen, &[], "an allow-list sandbox and the host")?;
    }
    Ok(())
}
