//! How evenly the consistent-hash family spreads keys and requests, and how
//! many keys move when a backend leaves or joins: the figures and plots in
//! `docs/algorithms.md`, measured here.
//!
//! ```text
//! cargo run --release --example spread            # tables to stdout, plots to docs/img/
//! cargo run --release --example spread -- --quick # 100,000 keys, no plots
//! ```
//!
//! (Release builds of this workspace link with fat LTO: the first one takes a
//! few minutes.)
//!
//! Deterministic: the keys are 1,000,000 16-byte strings from SplitMix64
//! with a fixed seed, the backends `10.0.x.y:8080` with weight 1, and every
//! strategy hashes with fixed keys, so two runs print the same numbers.
//!
//! * Keys per backend: peak-to-mean of how many of the keys each backend
//!   owns, beside the exact share of the hash space each owns (no sampling
//!   noise) and the noise floor (a perfect split still shows the binomial
//!   spread of random keys: the keys scaled straight to `0..n`).
//! * Requests in flight: the keys as requests, each held until `8 × n`
//!   later requests have started (a steady concurrency of 8 per backend),
//!   through a `LoadBalancer`; the busiest backend's peak over the mean of
//!   8. Once with every key distinct, once with one request in ten for the
//!   same hot key.
//! * Keys moved: when one of `n` backends is removed (the mean over three:
//!   the first, middle and last listed) and when one is added, the share of
//!   keys whose backend changes, as a multiple of the ideal `1/n` (removal)
//!   or `1/(n + 1)` (addition).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::Path;

use tower_lb::{
    Backend, Balancer, BuildBalancer, ConsistentHash, InFlight, Load, LoadBalancer, Maglev, Member,
    Strategy,
};

const SIZES: [usize; 3] = [10, 100, 1_000];
const LARGE_TABLE: u32 = 655_373;
const LARGE_VNODES: u32 = 1_000;

fn backend(i: usize) -> Backend {
    Backend::new(&format!("http://10.0.{}.{}:8080", i / 256, i % 256)).expect("valid backend")
}

fn members(n: usize) -> Vec<Member> {
    (0..n).map(|i| Member::new(backend(i))).collect()
}

/// `count` pseudo-random 16-byte keys (SplitMix64 from a fixed seed).
fn keys(count: usize) -> Vec<[u8; 16]> {
    let mut state = 0x5eed_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (0..count)
        .map(|_| {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&next().to_le_bytes());
            key[8..].copy_from_slice(&next().to_le_bytes());
            key
        })
        .collect()
}

/// The strategies compared, with the labels the tables use.
fn hashes() -> [(&'static str, Strategy); 4] {
    [
        ("ring, 160 points", Strategy::consistent_hash()),
        (
            "ring, 1,000 points",
            Strategy::ConsistentHash {
                vnodes: LARGE_VNODES,
            },
        ),
        ("Maglev, 65,537 slots", Strategy::maglev()),
        (
            "Maglev, 655,373 slots",
            Strategy::Maglev {
                table_size: LARGE_TABLE,
            },
        ),
    ]
}

fn owners(balancer: &dyn Balancer, keys: &[[u8; 16]]) -> Vec<u32> {
    keys.iter()
        .map(|k| balancer.pick(Some(k)).expect("every backend is up") as u32)
        .collect()
}

fn counts(owners: &[u32], n: usize) -> Vec<u64> {
    let mut counts = vec![0u64; n];
    for &o in owners {
        counts[o as usize] += 1;
    }
    counts
}

fn peak_to_mean(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    values.iter().cloned().fold(0.0, f64::max) / mean
}

/// The share of the hash space each member owns.
fn shares(strategy: Strategy, members: &[Member]) -> Vec<f64> {
    match strategy {
        Strategy::ConsistentHash { vnodes } => ConsistentHash::with_vnodes(members, vnodes)
            .expect("ring builds")
            .ownership(),
        Strategy::Maglev { table_size } => {
            let maglev = Maglev::with_table_size(members, table_size).expect("table builds");
            let size = maglev.table_size() as f64;
            maglev
                .slots()
                .iter()
                .map(|&s| f64::from(s) / size)
                .collect()
        }
        _ => unreachable!("only hashes are compared"),
    }
}

/// Keys whose backend changes when member `removed` goes, as a multiple of
/// `1/n`.
fn moved_on_removal(strategy: Strategy, n: usize, removed: usize, keys: &[[u8; 16]]) -> f64 {
    let all = members(n);
    let before = owners(&*strategy.build(&all).expect("builds"), keys);
    let mut fewer = all.clone();
    fewer.remove(removed);
    let after = owners(&*strategy.build(&fewer).expect("builds"), keys);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|&(&b, &a)| {
            let a = a as usize + usize::from(a as usize >= removed);
            b as usize != a
        })
        .count();
    moved as f64 / keys.len() as f64 * n as f64
}

/// Keys whose backend changes when an `n + 1`-th member joins, as a
/// multiple of `1/(n + 1)`.
fn moved_on_addition(strategy: Strategy, n: usize, keys: &[[u8; 16]]) -> f64 {
    let all = members(n + 1);
    let before = owners(&*strategy.build(&all[..n]).expect("builds"), keys);
    let after = owners(&*strategy.build(&all).expect("builds"), keys);
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    moved as f64 / keys.len() as f64 * (n + 1) as f64
}

/// Runs the keys as requests through a load balancer, each held until
/// `8 × n` later ones have started; the busiest backend's peak in-flight
/// count over the mean, 8. `hot` sends one request in ten to one key.
fn in_flight_peak(strategy: Strategy, n: usize, keys: &[[u8; 16]], hot: bool) -> f64 {
    let lb = LoadBalancer::new(strategy, (0..n).map(backend)).expect("builds");
    let concurrency = 8 * n;
    let mut held: VecDeque<InFlight> = VecDeque::with_capacity(concurrency + 1);
    let mut peak = 0;
    for (i, key) in keys.iter().enumerate() {
        if held.len() == concurrency {
            held.pop_front();
        }
        let key: &[u8] = if hot && i % 10 == 0 { b"hot" } else { key };
        let member = lb.pick(Some(key)).expect("every backend is up");
        let guard = Load::start(member.load());
        peak = peak.max(guard.load().in_flight());
        held.push_back(guard);
    }
    peak as f64 / 8.0
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let keys = keys(if quick { 100_000 } else { 1_000_000 });
    let mut out = String::new();
    let mut plot_load: Vec<(&str, Vec<f64>)> = Vec::new();
    let mut plot_moved: Vec<(&str, Vec<f64>)> = Vec::new();

    let thousands = |n: usize| {
        let digits = n.to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        grouped
    };
    writeln!(
        out,
        "### Keys per backend ({} keys): peak-to-mean\n",
        thousands(keys.len())
    )
    .unwrap();
    writeln!(
        out,
        "| strategy | 10 backends | 100 backends | 1,000 backends | share of the hash space: 10 / 100 / 1,000 |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for (label, strategy) in hashes() {
        let mut by_keys = Vec::new();
        let mut by_share = Vec::new();
        for n in SIZES {
            let m = members(n);
            let balancer = strategy.build(&m).expect("builds");
            let count = counts(&owners(&*balancer, &keys), n);
            let loads: Vec<f64> = count.iter().map(|&c| c as f64).collect();
            by_keys.push(peak_to_mean(&loads));
            by_share.push(peak_to_mean(&shares(strategy, &m)));
            if n == 100 && matches!(label, "ring, 160 points" | "Maglev, 65,537 slots") {
                let mean = keys.len() as f64 / n as f64;
                let mut relative: Vec<f64> = loads.iter().map(|l| l / mean).collect();
                relative.sort_by(|a, b| b.total_cmp(a));
                plot_load.push((label, relative));
            }
        }
        writeln!(
            out,
            "| {label} | {:.3} | {:.3} | {:.3} | {:.4} / {:.4} / {:.4} |",
            by_keys[0], by_keys[1], by_keys[2], by_share[0], by_share[1], by_share[2]
        )
        .unwrap();
    }
    // A perfect split still shows the spread of random keys.
    let floor: Vec<f64> = SIZES
        .iter()
        .map(|&n| {
            let mut count = vec![0f64; n];
            for k in &keys {
                let hash = Maglev::hash_key(k);
                count[((u128::from(hash) * n as u128) >> 64) as usize] += 1.0;
            }
            if n == 100 {
                let mean = keys.len() as f64 / n as f64;
                let mut relative: Vec<f64> = count.iter().map(|c| c / mean).collect();
                relative.sort_by(|a, b| b.total_cmp(a));
                plot_load.push(("a perfect split (noise)", relative));
            }
            peak_to_mean(&count)
        })
        .collect();
    writeln!(
        out,
        "| noise floor (a perfect split) | {:.3} | {:.3} | {:.3} | 1 / 1 / 1 |",
        floor[0], floor[1], floor[2]
    )
    .unwrap();

    writeln!(
        out,
        "\n### Requests in flight (concurrency 8 per backend): busiest backend's peak over the mean\n"
    )
    .unwrap();
    writeln!(
        out,
        "| strategy | 10 | 100 | 1,000 | 10, hot key | 100, hot key | 1,000, hot key |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    for (label, strategy) in [
        ("ring, 160 points", Strategy::consistent_hash()),
        ("Maglev, 65,537 slots", Strategy::maglev()),
        (
            "bounded load over the ring, ε = 0.25",
            Strategy::bounded_load(),
        ),
        (
            "bounded load over Maglev, ε = 0.25",
            Strategy::maglev_bounded_load(),
        ),
    ] {
        let mut row = format!("| {label} |");
        for hot in [false, true] {
            for n in SIZES {
                write!(row, " {:.3} |", in_flight_peak(strategy, n, &keys, hot)).unwrap();
            }
        }
        writeln!(out, "{row}").unwrap();
    }

    writeln!(
        out,
        "\n### Keys moved, as a multiple of the ideal (1/n on removal, 1/(n+1) on addition)\n"
    )
    .unwrap();
    writeln!(
        out,
        "| strategy | remove 1 of 10 | of 100 | of 1,000 | add 1 to 10 | to 100 | to 1,000 |"
    )
    .unwrap();
    writeln!(out, "|---|---|---|---|---|---|---|").unwrap();
    for (label, strategy) in hashes() {
        let removal: Vec<f64> = SIZES
            .iter()
            .map(|&n| {
                [0, n / 2, n - 1]
                    .iter()
                    .map(|&r| moved_on_removal(strategy, n, r, &keys))
                    .sum::<f64>()
                    / 3.0
            })
            .collect();
        let addition: Vec<f64> = SIZES
            .iter()
            .map(|&n| moved_on_addition(strategy, n, &keys))
            .collect();
        writeln!(
            out,
            "| {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            removal[0], removal[1], removal[2], addition[0], addition[1], addition[2]
        )
        .unwrap();
        plot_moved.push((label, removal));
    }
    print!("{out}");

    if !quick {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/img");
        std::fs::create_dir_all(&dir).expect("docs/img can be created");
        let load = load_plot(&plot_load, keys.len());
        std::fs::write(dir.join("spread-load-per-backend.svg"), load).expect("plot written");
        let moved = moved_plot(&plot_moved);
        std::fs::write(dir.join("spread-keys-moved.svg"), moved).expect("plot written");
        eprintln!("wrote docs/img/spread-load-per-backend.svg and docs/img/spread-keys-moved.svg");
    }
}

// ---------------------------------------------------------------------------
// SVG, by hand: two small charts need no plotting library.

const COLORS: [&str; 4] = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a"];
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 360.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;

fn svg_open(title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n",
        WIDTH / 2.0
    )
}

/// Horizontal grid lines and labels for `ticks` on a y axis `lo..hi`.
fn y_axis(svg: &mut String, lo: f64, hi: f64, ticks: &[f64], label: &str) {
    let plot_h = HEIGHT - TOP - BOTTOM;
    for &t in ticks {
        let y = TOP + plot_h * (1.0 - (t - lo) / (hi - lo));
        writeln!(
            svg,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{t}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        )
        .unwrap();
    }
    writeln!(
        svg,
        "<text transform=\"translate(16 {:.1}) rotate(-90)\" text-anchor=\"middle\">{label}</text>",
        TOP + plot_h / 2.0
    )
    .unwrap();
}

fn legend(svg: &mut String, labels: &[&str]) {
    for (i, label) in labels.iter().enumerate() {
        let x = LEFT + 12.0 + 165.0 * i as f64;
        writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{:.1}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{:.1}\">{label}</text>",
            HEIGHT - 22.0,
            COLORS[i % COLORS.len()],
            x + 16.0,
            HEIGHT - 12.0
        )
        .unwrap();
    }
}

/// Keys per backend over the mean, busiest first, one line per strategy.
fn load_plot(series: &[(&str, Vec<f64>)], keys: usize) -> String {
    let mut svg = svg_open(&format!(
        "Keys per backend over the mean, 100 backends, {}k keys (busiest first)",
        keys / 1000
    ));
    let (lo, hi) = (0.7, 1.3);
    y_axis(
        &mut svg,
        lo,
        hi,
        &[0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3],
        "keys / mean",
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    for (i, (_, values)) in series.iter().enumerate() {
        let n = values.len().max(2) as f64;
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(j, v)| {
                let x = LEFT + plot_w * j as f64 / (n - 1.0);
                let y = TOP + plot_h * (1.0 - (v.clamp(lo, hi) - lo) / (hi - lo));
                format!("{x:.1},{y:.1}")
            })
            .collect();
        writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            COLORS[i % COLORS.len()],
            points.join(" ")
        )
        .unwrap();
    }
    writeln!(
        svg,
        "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\">backends, sorted by load</text>",
        LEFT + plot_w / 2.0,
        HEIGHT - BOTTOM + 16.0
    )
    .unwrap();
    legend(
        &mut svg,
        &series.iter().map(|(label, _)| *label).collect::<Vec<_>>(),
    );
    svg.push_str("</svg>\n");
    svg
}

/// Keys moved on removing one backend, over the ideal, grouped by size.
fn moved_plot(series: &[(&str, Vec<f64>)]) -> String {
    let mut svg = svg_open("Keys moved when one of n backends is removed, over the ideal 1/n");
    let hi = series
        .iter()
        .flat_map(|(_, v)| v.iter().cloned())
        .fold(1.0, f64::max)
        .ceil();
    let ticks: Vec<f64> = (0..=hi as usize).map(|t| t as f64).collect();
    y_axis(&mut svg, 0.0, hi, &ticks, "keys moved / ideal");
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let ideal = TOP + plot_h * (1.0 - 1.0 / hi);
    writeln!(
        svg,
        "<line x1=\"{LEFT}\" y1=\"{ideal:.1}\" x2=\"{}\" y2=\"{ideal:.1}\" stroke=\"#333\" \
         stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">ideal</text>",
        WIDTH - RIGHT,
        WIDTH - RIGHT - 4.0,
        ideal - 4.0
    )
    .unwrap();
    let group_w = plot_w / SIZES.len() as f64;
    let bar_w = group_w * 0.8 / series.len() as f64;
    for (g, n) in SIZES.iter().enumerate() {
        let x0 = LEFT + group_w * g as f64 + group_w * 0.1;
        for (i, (_, values)) in series.iter().enumerate() {
            let v = values[g];
            let h = plot_h * v / hi;
            let x = x0 + bar_w * i as f64;
            writeln!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"{}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{v:.2}</text>",
                TOP + plot_h - h,
                bar_w - 2.0,
                COLORS[i % COLORS.len()],
                x + bar_w / 2.0 - 1.0,
                TOP + plot_h - h - 3.0
            )
            .unwrap();
        }
        writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n} backends</text>",
            x0 + group_w * 0.4,
            HEIGHT - BOTTOM + 16.0
        )
        .unwrap();
    }
    legend(
        &mut svg,
        &series.iter().map(|(label, _)| *label).collect::<Vec<_>>(),
    );
    svg.push_str("</svg>\n");
    svg
}
