//! Runs the checkpoint comparison side by side on the same deltas and writes a markdown report and
//! an SVG plot of checkpoint time versus change rate (rockpoint, BackupEngine, cp + sync floor).
//!
//! `cargo run --release --bin rockpoint-benchreport -- --sizes 100MiB,1GiB --cycles 5 --out benches`
//!
//! With `--s3` it runs the S3 report instead (`s3.rs`): checkpoints and restores against SeaweedFS
//! on loopback versus plain `object_store` transfers of the same bytes, with request counts, and
//! writes `s3.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod counting;
mod rescale;
mod s3;
mod s3server;

use clap::Parser;
use hdrhistogram::Histogram;
use rockpoint_bench::{Cycle, Fixture, human, median, parse_size};

/// Side-by-side checkpoint benchmark report.
#[derive(Parser)]
struct Args {
    /// State sizes.
    #[arg(long, default_value = "100MiB,1GiB")]
    sizes: String,
    /// Change rates (fractions of the keys rewritten per cycle).
    #[arg(long, default_value = "0.01,0.1,1.0")]
    rates: String,
    /// Measured cycles per size and rate (after one warm-up cycle).
    #[arg(long, default_value_t = 5)]
    cycles: usize,
    /// Seconds of checkpoints under continuous writes for the latency percentiles.
    #[arg(long, default_value_t = 20)]
    load_secs: u64,
    /// Where report.md and checkpoint_time.svg go (with --s3: s3.md).
    #[arg(long, default_value = "benches")]
    out: PathBuf,
    /// Run the S3 report instead, against SeaweedFS (`weed mini`) on loopback: each of --sizes is
    /// checkpointed in full, then --cycles times at each of --rates, then restored.
    #[arg(long)]
    s3: bool,
    /// With --s3: a state only checkpointed in full and restored ("none" skips it).
    #[arg(long, default_value = "1GiB")]
    s3_restore_size: String,
    /// With --s3: restores per state (alternating with the floor).
    #[arg(long, default_value_t = 2)]
    s3_restores: usize,
    /// With --s3: one file of this size uploaded with `Store::put_file` in a child process, whose
    /// peak RSS is reported ("none" skips it).
    #[arg(long, default_value = "4GiB")]
    s3_upload_size: String,
    /// Run the rescaling report instead (`rescale.rs`): a state of --rescale-size checkpointed at
    /// parallelism 2 and 4, restored at the other versus plain restores and re-ingest, --cycles
    /// times; writes `rescale.md`.
    #[arg(long)]
    rescale: bool,
    /// With --rescale: the state size.
    #[arg(long, default_value = "1GiB")]
    rescale_size: String,
    /// Internal: the child process of --s3-upload-size.
    #[arg(long, hide = true)]
    s3_upload_child: Option<u64>,
    /// Internal: the S3 endpoint of the child process.
    #[arg(long, hide = true)]
    s3_endpoint: Option<String>,
}

struct Row {
    size_label: String,
    size: u64,
    rate: f64,
    cycles: Vec<Cycle>,
}

/// The default path (no flush: the checkpoint ships the WAL), per size.
struct Unflushed {
    size_label: String,
    rate: f64,
    pauses: Vec<Duration>,
    e2e: Vec<Duration>,
    uploaded: u64,
    new_bytes: u64,
}

impl Row {
    fn med(&self, f: impl Fn(&Cycle) -> Duration) -> Duration {
        median(self.cycles.iter().map(f).collect())
    }
    fn max(&self, f: impl Fn(&Cycle) -> Duration) -> Duration {
        self.cycles.iter().map(f).max().unwrap_or_default()
    }
    fn sum(&self, f: impl Fn(&Cycle) -> u64) -> u64 {
        self.cycles.iter().map(f).sum()
    }
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(1) {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    }
}

fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("{:.2}×", a.as_secs_f64() / b.as_secs_f64())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    if let Some(size) = args.s3_upload_child {
        let endpoint = args.s3_endpoint.as_deref().expect("--s3-endpoint");
        return s3::upload_child(&runtime, size, endpoint).map_err(|e| e as _);
    }
    let sizes: Vec<(String, u64)> = args
        .sizes
        .split(',')
        .map(|s| (s.trim().to_owned(), parse_size(s)))
        .collect();
    let rates: Vec<f64> = args
        .rates
        .split(',')
        .map(|s| s.trim().parse().expect("rate"))
        .collect();
    if args.rescale {
        let report = rescale::run(&runtime, parse_size(&args.rescale_size), args.cycles)
            .map_err(|e| e as Box<dyn std::error::Error>)?;
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("rescale.md"), &report)?;
        println!("{report}");
        return Ok(());
    }
    if args.s3 {
        let optional = |text: &str| (text != "none").then(|| (text.to_owned(), parse_size(text)));
        let s3_args = s3::S3Args {
            sizes: sizes.clone(),
            rates: rates.clone(),
            cycles: args.cycles,
            restore_size: optional(&args.s3_restore_size),
            restores: args.s3_restores,
            upload_size: optional(&args.s3_upload_size),
        };
        let report = s3::run(&runtime, &s3_args).map_err(|e| e as Box<dyn std::error::Error>)?;
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("s3.md"), &report)?;
        println!("{report}");
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut unflushed = Vec::new();
    let mut restores = Vec::new();
    let mut memory = Vec::new();
    for (label, size) in &sizes {
        eprintln!("building {label} of state…");
        let mut fixture = runtime.block_on(Fixture::new(*size));
        for &rate in &rates {
            runtime.block_on(fixture.cycle(rate)); // warm-up
            let mut cycles = Vec::new();
            for i in 0..args.cycles {
                eprintln!(
                    "{label} {:.0}% cycle {}/{}",
                    rate * 100.0,
                    i + 1,
                    args.cycles
                );
                cycles.push(runtime.block_on(fixture.cycle(rate)));
            }
            rows.push(Row {
                size_label: label.clone(),
                size: *size,
                rate,
                cycles,
            });
        }
        let mut default_path = Unflushed {
            size_label: label.clone(),
            rate: 0.01,
            pauses: Vec::new(),
            e2e: Vec::new(),
            uploaded: 0,
            new_bytes: 0,
        };
        for i in 0..args.cycles {
            eprintln!("{label} unflushed 1% cycle {}/{}", i + 1, args.cycles);
            let (pause, e2e, uploaded, new_bytes) = runtime.block_on(fixture.unflushed_cycle(0.01));
            default_path.pauses.push(pause);
            default_path.e2e.push(e2e);
            default_path.uploaded += uploaded;
            default_path.new_bytes += new_bytes;
        }
        unflushed.push(default_path);
        fixture.quiesce();
        let (restore, floor, bytes) = runtime.block_on(fixture.restore_vs_floor());
        let (after_uploaded, after_new, _) =
            runtime.block_on(fixture.first_checkpoint_after_restore(0.01));
        restores.push(Restore {
            label: label.clone(),
            restore,
            floor,
            bytes,
            after_uploaded,
            after_new,
        });
        // Peak memory of a 100% change checkpoint (streamed uploads).
        fixture.change(1.0);
        fixture.backend.flush()?;
        fixture.quiesce();
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = rockpoint_bench::rss_bytes();
        let done = runtime.block_on(fixture.coordinator.checkpoint(&[&fixture.backend]))?;
        let peak = rockpoint_bench::peak_rss_bytes();
        memory.push((label.clone(), done.uploaded_bytes(), before, peak));
    }
    let load = runtime.block_on(under_load(sizes[0].1, Duration::from_secs(args.load_secs)));
    let report = render(&rows, &unflushed, &restores, &memory, &load);
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(args.out.join("report.md"), &report)?;
    std::fs::write(args.out.join("checkpoint_time.svg"), plot(&rows, &sizes))?;
    println!("{report}");
    Ok(())
}

struct Load {
    size: u64,
    checkpoints: u64,
    writes: u64,
    pause_us: Histogram<u64>,
    duration_us: Histogram<u64>,
}

/// Checkpoints every 200 ms for `secs` while a writer thread rewrites keys continuously.
async fn under_load(size: u64, secs: Duration) -> Load {
    let fixture = Fixture::new(size).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let values = fixture.values.clone();
        let keys = fixture.keys;
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let value = vec![0xA5u8; rockpoint_bench::VALUE_BYTES];
            while !stop.load(Ordering::Relaxed) {
                values
                    .put(&(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys), &value)
                    .expect("write");
                n += 1;
            }
            n
        })
    };
    // Only the checkpoints taken under load count: the fixture's first (full) one is subtracted.
    let setup = fixture.coordinator.metrics();
    let start = Instant::now();
    let mut checkpoints = 0;
    while start.elapsed() < secs {
        fixture
            .coordinator
            .checkpoint(&[&fixture.backend])
            .await
            .expect("checkpoint under load");
        checkpoints += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let writes = writer.join().expect("writer");
    let mut metrics = fixture.coordinator.metrics();
    metrics
        .sync_pause_us
        .subtract(&setup.sync_pause_us)
        .expect("same histogram bounds");
    metrics
        .checkpoint_duration_us
        .subtract(&setup.checkpoint_duration_us)
        .expect("same histogram bounds");
    Load {
        size,
        checkpoints,
        writes,
        pause_us: metrics.sync_pause_us,
        duration_us: metrics.checkpoint_duration_us,
    }
}

fn render(
    rows: &[Row],
    unflushed: &[Unflushed],
    restores: &[Restore],
    memory: &[(String, u64, u64, u64)],
    load: &Load,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Checkpoint comparison (medians of each cycle, same deltas, one run)\n"
    );
    let _ = writeln!(
        out,
        "| state | change | rockpoint pause | Flink-style pause (flush+Checkpoint) | rockpoint end-to-end | BackupEngine | cp+sync floor | rockpoint/floor | rockpoint/BackupEngine |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let e2e = r.med(|c| c.e2e);
        let _ = writeln!(
            out,
            "| {} | {:.0}% | {} (max {}) | {} | {} | {} | {} | {} | {} |",
            r.size_label,
            r.rate * 100.0,
            ms(r.med(|c| c.pause)),
            ms(r.max(|c| c.pause)),
            ms(r.med(|c| c.flink_pause)),
            ms(e2e),
            ms(r.med(|c| c.backup)),
            ms(r.med(|c| c.floor)),
            ratio(e2e, r.med(|c| c.floor)),
            ratio(e2e, r.med(|c| c.backup)),
        );
    }
    let _ = writeln!(
        out,
        "\n## Bytes uploaded versus bytes new (sums over the measured cycles)\n"
    );
    let _ = writeln!(
        out,
        "| state | change | rockpoint uploaded | new SST bytes (what the floor copied) | ratio |\n|---|---|---|---|---|"
    );
    for r in rows {
        let up = r.sum(|c| c.uploaded);
        let new = r.sum(|c| c.new_sst_bytes);
        let _ = writeln!(
            out,
            "| {} | {:.0}% | {} | {} | {:.3} |",
            r.size_label,
            r.rate * 100.0,
            human(up),
            human(new),
            up as f64 / new.max(1) as f64,
        );
    }
    let _ = writeln!(
        out,
        "\n## Default path: no flush, the checkpoint ships the WAL written since the previous one\n"
    );
    let _ = writeln!(
        out,
        "| state | change | pause p50 | pause max | end-to-end p50 | uploaded | WAL written + new SSTs | ratio |\n|---|---|---|---|---|---|---|---|"
    );
    for u in unflushed {
        let _ = writeln!(
            out,
            "| {} | {:.0}% | {} | {} | {} | {} | {} | {:.3} |",
            u.size_label,
            u.rate * 100.0,
            ms(median(u.pauses.clone())),
            ms(u.pauses.iter().copied().max().unwrap_or_default()),
            ms(median(u.e2e.clone())),
            human(u.uploaded),
            human(u.new_bytes),
            u.uploaded as f64 / u.new_bytes.max(1) as f64
        );
    }
    let _ = writeln!(out, "\n## Scaling: fixed delta, growing state\n");
    let mut scaling = false;
    for small in rows {
        for large in rows {
            let delta_small = small.size as f64 * small.rate;
            let delta_large = large.size as f64 * large.rate;
            if large.size >= small.size * 8
                && (delta_small - delta_large).abs() / delta_small < 0.05
            {
                let (a, b) = (small.med(|c| c.e2e), large.med(|c| c.e2e));
                let _ = writeln!(
                    out,
                    "- delta {}: {} state {} vs {} state {} → {}",
                    human(delta_small as u64),
                    small.size_label,
                    ms(a),
                    large.size_label,
                    ms(b),
                    ratio(b, a)
                );
                scaling = true;
            }
        }
    }
    if !scaling {
        let _ = writeln!(out, "- (needs two sizes 10× apart with rates 10× apart)");
    }
    let _ = writeln!(
        out,
        "\n## Restore (download + BLAKE3 verify + open) versus cp + sync of the same files\n"
    );
    let _ = writeln!(
        out,
        "| state | bytes | restore | floor | ratio |\n|---|---|---|---|---|"
    );
    for r in restores {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            r.label,
            human(r.bytes),
            ms(r.restore),
            ms(r.floor),
            ratio(r.restore, r.floor)
        );
    }
    let _ = writeln!(
        out,
        "\n## First checkpoint after a restore (new job, no claim, 1% change)\n\n\
         | state | restored | uploaded | WAL written + SSTs new since the restore | ratio |\n|---|---|---|---|---|"
    );
    for r in restores {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.3} |",
            r.label,
            human(r.bytes),
            human(r.after_uploaded),
            human(r.after_new),
            r.after_uploaded as f64 / r.after_new.max(1) as f64
        );
    }
    let _ = writeln!(
        out,
        "\n## Under continuous writes ({} of state, a checkpoint every 200 ms)\n",
        human(load.size)
    );
    let _ = writeln!(
        out,
        "{} checkpoints while a writer thread made {} writes.\n\n| | p50 | p99 | max |\n|---|---|---|---|",
        load.checkpoints, load.writes
    );
    for (name, h) in [
        ("sync pause", &load.pause_us),
        ("checkpoint duration", &load.duration_us),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} |",
            ms(Duration::from_micros(h.value_at_quantile(0.5))),
            ms(Duration::from_micros(h.value_at_quantile(0.99))),
            ms(Duration::from_micros(h.max()))
        );
    }
    let _ = writeln!(out, "\n## Memory during a 100% change checkpoint\n");
    let _ = writeln!(
        out,
        "| state | uploaded | RSS before | peak RSS during | growth |\n|---|---|---|---|---|"
    );
    for (label, uploaded, before, peak) in memory {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} |",
            human(*uploaded),
            human(*before),
            human(*peak),
            human(peak.saturating_sub(*before))
        );
    }
    out
}

/// A restore against the floor, and the first checkpoint of a job restored from the same checkpoint.
struct Restore {
    label: String,
    restore: Duration,
    floor: Duration,
    bytes: u64,
    /// Bytes the restored job's first checkpoint uploaded.
    after_uploaded: u64,
    /// WAL written since the restore + SSTs the restored checkpoint did not hold.
    after_new: u64,
}

/// A contender in the plot: name, colour, and its time in a cycle.
type Series = (&'static str, &'static str, fn(&Cycle) -> Duration);

/// Grouped bars per size: checkpoint time (median, ms) per change rate for the three contenders.
fn plot(rows: &[Row], sizes: &[(String, u64)]) -> String {
    let (width, height, margin) = (360.0 * sizes.len() as f64 + 80.0, 380.0, 60.0);
    let series: [Series; 3] = [
        ("rockpoint", "#1f77b4", |c| c.e2e),
        ("BackupEngine", "#ff7f0e", |c| c.backup),
        ("cp + sync floor", "#2ca02c", |c| c.floor),
    ];
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="20" text-anchor="middle" font-size="14">Checkpoint time vs change rate (median ms; linear, one scale per panel)</text>
"#,
        width / 2.0
    );
    let plot_h = height - 2.0 * margin;
    for (panel, (label, _)) in sizes.iter().enumerate() {
        let x0 = margin + panel as f64 * 360.0;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{label} state</text>"#,
            x0 + 150.0,
            height - 15.0
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{}" x2="{}" y2="{}" stroke="#333"/>"##,
            margin + plot_h,
            x0 + 300.0,
            margin + plot_h
        );
        let panel_rows: Vec<&Row> = rows.iter().filter(|r| &r.size_label == label).collect();
        // Each panel has its own scale: state sizes differ by an order of magnitude.
        let max_ms = panel_rows
            .iter()
            .flat_map(|r| {
                series
                    .iter()
                    .map(move |(_, _, f)| r.med(*f).as_secs_f64() * 1e3)
            })
            .fold(1.0f64, f64::max);
        for (i, row) in panel_rows.iter().enumerate() {
            let gx = x0 + 10.0 + i as f64 * 100.0;
            for (j, (_, color, f)) in series.iter().enumerate() {
                let v = row.med(*f).as_secs_f64() * 1e3;
                let h = plot_h * v / max_ms;
                let _ = writeln!(
                    svg,
                    r#"<rect x="{}" y="{}" width="26" height="{h}" fill="{color}"><title>{v:.1} ms</title></rect>"#,
                    gx + j as f64 * 28.0,
                    margin + plot_h - h
                );
                let _ = writeln!(
                    svg,
                    r#"<text x="{}" y="{}" font-size="9" text-anchor="middle">{v:.0}</text>"#,
                    gx + j as f64 * 28.0 + 13.0,
                    margin + plot_h - h - 3.0
                );
            }
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle">{:.0}%</text>"#,
                gx + 42.0,
                margin + plot_h + 16.0,
                row.rate * 100.0
            );
        }
    }
    for (j, (name, color, _)) in series.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="32" width="12" height="12" fill="{color}"/><text x="{}" y="42">{name}</text>"#,
            margin + j as f64 * 140.0,
            margin + j as f64 * 140.0 + 16.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
