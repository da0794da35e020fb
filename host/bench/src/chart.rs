//! The report's two charts as hand-written SVG: throughput vs concurrency
//! (payrail on both paths, and the peer) and the latency distribution
//! (percentiles of each path's peak run and of its paced run).
//!
//! Why by hand: two line charts need a few dozen lines of SVG text, while
//! a plotting crate (plotters and its font/image stack) would add a large
//! dependency tree and build time to the `payrail` binary for one report
//! file. The output is plain SVG 1.1 that any browser or GitHub renders.

use crate::report::{LOAD_FRACTION, P3_MAX_P99_MS, PathKind, Report, best};
use crate::workload::{LEVELS, Workload};
use std::fmt::Write;

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 230.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One line of a chart.
struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    /// (index into the x labels, value)
    points: Vec<(usize, f64)>,
}

fn color(path: Option<PathKind>) -> &'static str {
    match path {
        Some(PathKind::InProcess) => "#1f77b4",
        Some(PathKind::Http) => "#2ca02c",
        None => "#7f7f7f",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A step of 1, 2 or 5 times a power of ten giving about five ticks.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// A line chart over categorical x positions; `log_y` plots log10 values.
fn line_chart(
    title: &str,
    x_title: &str,
    x_labels: &[String],
    y_title: &str,
    log_y: bool,
    series: &[Series],
    reference: Option<(f64, &str)>,
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(reference.map(|r| r.0))
        .filter(|v| v.is_finite() && (!log_y || *v > 0.0))
        .collect();
    let max = values.iter().copied().fold(0.0, f64::max);
    let (y_min, y_max, ticks): (f64, f64, Vec<f64>) = if log_y {
        let lo = values
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .max(1e-3)
            .log10()
            .floor();
        let hi = max.max(1e-3).log10().ceil().max(lo + 1.0);
        let ticks = (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect();
        (lo, hi, ticks)
    } else {
        let step = nice_step(max.max(1.0));
        let top = (max / step).ceil().max(1.0) * step;
        let n = (top / step).round() as usize;
        (0.0, top, (0..=n).map(|i| i as f64 * step).collect())
    };
    let y_of = |v: f64| {
        let t = if log_y { v.max(1e-3).log10() } else { v };
        TOP + plot_h - (t - y_min) / (y_max - y_min).max(1e-9) * plot_h
    };
    let n = x_labels.len().max(1);
    let x_of = |i: usize| {
        if n == 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + i as f64 * plot_w / (n - 1) as f64
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        LEFT,
        escape(title)
    );
    for t in &ticks {
        let y = y_of(*t);
        let label = if *t >= 1000.0 {
            format!("{:.0}", t)
        } else if *t >= 1.0 {
            format!("{}", (t * 100.0).round() / 100.0)
        } else {
            format!("{t}")
        };
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (i, l) in x_labels.iter().enumerate() {
        let x = x_of(i);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            escape(l)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0,
        escape(x_title)
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(16 {}) rotate(-90)" text-anchor="middle">{}</text>"#,
        TOP + plot_h / 2.0,
        escape(y_title)
    );
    if let Some((v, label)) = reference {
        let y = y_of(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#d62728" stroke-width="1" stroke-dasharray="2 3"/><text x="{}" y="{:.1}" fill="#d62728" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT + plot_w - 4.0,
            y - 4.0,
            escape(label)
        );
    }
    for (k, line) in series.iter().enumerate() {
        let dash = if line.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<String> = line
            .points
            .iter()
            .filter(|p| p.1.is_finite() && (!log_y || p.1 > 0.0))
            .map(|&(i, v)| format!("{:.1},{:.1}", x_of(i), y_of(v)))
            .collect();
        if pts.len() > 1 {
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{dash}/>"#,
                pts.join(" "),
                line.color
            );
        }
        for p in &pts {
            let (x, y) = p.split_once(',').expect("formatted as x,y");
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                line.color
            );
        }
        let ly = TOP + 10.0 + k as f64 * 20.0;
        let lx = LEFT + plot_w + 14.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{}" stroke-width="2"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 26.0,
            line.color,
            lx + 32.0,
            ly + 4.0,
            escape(&line.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Throughput vs concurrency: payrail per path and the peer, per workload
/// (hot_fee dashed).
pub fn throughput(r: &Report) -> String {
    let mut xs: Vec<usize> = r
        .runs
        .iter()
        .filter(|run| run.processes <= 1)
        .map(|run| run.clients)
        .chain(r.peer.iter().filter(|p| p.tps.is_some()).map(|p| p.clients))
        .collect();
    xs.sort_unstable();
    xs.dedup();
    let ix = |c: usize| xs.iter().position(|x| *x == c).expect("collected above");
    let mut series = Vec::new();
    for workload in Workload::ALL {
        let dashed = workload != Workload::Uniform;
        for path in [PathKind::InProcess, PathKind::Http] {
            let points: Vec<(usize, f64)> = r
                .runs
                .iter()
                .filter(|x| x.path == path && x.workload == workload && x.processes <= 1)
                .map(|x| (ix(x.clients), x.tps))
                .collect();
            if !points.is_empty() {
                series.push(Series {
                    label: format!("payrail {} {}", path.name(), workload.name()),
                    color: color(Some(path)),
                    dashed,
                    points,
                });
            }
        }
        let points: Vec<(usize, f64)> = r
            .peer
            .iter()
            .filter(|p| p.workload == workload)
            .filter_map(|p| p.tps.map(|t| (ix(p.clients), t)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                label: format!("peer {}", workload.name()),
                color: color(None),
                dashed,
                points,
            });
        }
    }
    let labels: Vec<String> = xs.iter().map(|c| c.to_string()).collect();
    line_chart(
        "Throughput vs concurrency (hot_fee and spread_fee dashed)",
        "concurrent clients",
        &labels,
        "payments per second",
        false,
        &series,
        None,
    )
}

/// Latency percentiles (log scale): each path's and workload's peak
/// closed-loop run (solid) and its paced run at 80% of peak (dashed), and
/// the peer's paced run at 80% of its peak (dashed, grey and olive).
pub fn latency(r: &Report) -> String {
    let labels: Vec<String> = LEVELS.iter().map(|(n, _)| n.to_string()).collect();
    let mut series = Vec::new();
    for path in [PathKind::InProcess, PathKind::Http] {
        for workload in [Workload::Uniform, Workload::HotFee] {
            let runs = [
                (best(&r.runs, path, workload), false, "peak"),
                (
                    r.at_load.iter().find(|x| {
                        x.path == path
                            && x.workload == workload
                            && x.load_fraction == Some(LOAD_FRACTION)
                    }),
                    true,
                    "80%",
                ),
            ];
            for (run, dashed, what) in runs {
                let Some(run) = run else { continue };
                series.push(Series {
                    label: format!("{} {} {what}", path.name(), workload.name()),
                    color: match (path, workload) {
                        (PathKind::InProcess, Workload::Uniform) => "#1f77b4",
                        (PathKind::InProcess, Workload::HotFee) => "#9467bd",
                        (PathKind::Http, Workload::Uniform) => "#2ca02c",
                        (PathKind::Http, Workload::HotFee) => "#d62728",
                        (_, Workload::SpreadFee) => "#8c564b",
                        (_, Workload::HotPair) => "#e377c2",
                    },
                    dashed,
                    points: run.latency.values().into_iter().enumerate().collect(),
                });
            }
        }
    }
    for p in &r.peer_at_load {
        series.push(Series {
            label: format!("peer {} 80%", p.workload.name()),
            color: match p.workload {
                Workload::Uniform => "#7f7f7f",
                Workload::HotFee => "#bcbd22",
                Workload::SpreadFee => "#17becf",
                Workload::HotPair => "#8c564b",
            },
            dashed: true,
            points: p.latency.values().into_iter().enumerate().collect(),
        });
    }
    line_chart(
        "Latency distribution (solid: peak run, dashed: paced at 80%)",
        "percentile",
        &labels,
        "latency, ms (log)",
        true,
        &series,
        Some((
            P3_MAX_P99_MS,
            &format!("P3: p99 <= {P3_MAX_P99_MS} ms at 50%"),
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10_000.0), 2000.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(1.0), 0.2);
    }

    #[test]
    fn a_chart_is_well_formed_svg() {
        let svg = line_chart(
            "t<1>",
            "x",
            &["8".into(), "32".into()],
            "y",
            true,
            &[Series {
                label: "a & b".into(),
                color: "#000",
                dashed: true,
                points: vec![(0, 1.5), (1, 20.0)],
            }],
            Some((25.0, "goal")),
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t&lt;1&gt;") && svg.contains("a &amp; b"));
        assert!(svg.contains("<polyline"));
    }
}
