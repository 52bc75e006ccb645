//! The latency-by-percentile plot: percentile on a log scale from 0 to 99.99 (x = -log10(1 -
//! p), so 90, 99, 99.9 and 99.99 are equally spaced), round-trip time on a log scale, one line
//! per transport. Written by hand: a few hundred lines of SVG need no plotting library.

use hdrhistogram::Histogram;
use std::fmt::Write;

const WIDTH: f64 = 1000.0;
const HEIGHT: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 270.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 70.0;
/// The last percentile shown: 99.99 (x = 4).
const X_MAX: f64 = 4.0;

const COLOURS: [&str; 8] = [
    "#444444", "#d62728", "#ff7f0e", "#7f7f7f", "#9467bd", "#1f77b4", "#2ca02c", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An axis label: a round number of ns, µs or ms.
fn duration(ns: f64) -> String {
    match ns {
        n if n >= 1e6 => format!("{} ms", n / 1e6),
        n if n >= 1e3 => format!("{} µs", n / 1e3),
        n => format!("{n} ns"),
    }
}

/// A measured time, to three significant figures at most.
fn measured(ns: u64) -> String {
    match ns {
        0..1000 => format!("{ns} ns"),
        1000..10_000 => format!("{:.2} µs", ns as f64 / 1e3),
        10_000..100_000 => format!("{:.1} µs", ns as f64 / 1e3),
        100_000..1_000_000 => format!("{:.0} µs", ns as f64 / 1e3),
        _ => format!("{:.1} ms", ns as f64 / 1e6),
    }
}

/// The plot of `series` (name, round-trip histogram in ns), with a title and a subtitle.
pub fn plot(title: &str, subtitle: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let quantile = |x: f64| 1.0 - 10f64.powf(-x);
    let points: Vec<f64> = (0..=200).map(|i| X_MAX * f64::from(i) / 200.0).collect();
    let lo = series
        .iter()
        .map(|(_, h)| h.value_at_quantile(0.0).max(1))
        .min()
        .unwrap_or(1) as f64;
    let hi = series
        .iter()
        .map(|(_, h)| h.value_at_quantile(quantile(X_MAX)).max(1))
        .max()
        .unwrap_or(10) as f64;
    let (y_lo, y_hi) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + pw * x / X_MAX;
    let py = |ns: f64| TOP + ph * (1.0 - (ns.max(1.0).log10() - y_lo) / (y_hi - y_lo));

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="13">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="30" font-size="17" font-weight="bold">{}</text>"#,
        LEFT,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{}" y="52" fill="#555">{}</text>"##,
        LEFT,
        escape(subtitle)
    );
    // Vertical grid and percentile labels.
    for (x, label) in [
        (0.0, "0%"),
        (1.0, "90%"),
        (2.0, "99%"),
        (3.0, "99.9%"),
        (4.0, "99.99%"),
    ] {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            px(x),
            TOP,
            TOP + ph,
            TOP + ph + 20.0,
            label
        );
    }
    // Horizontal grid: decades labelled, 2x and 5x faint.
    let mut d = y_lo;
    while d <= y_hi {
        for (m, strong) in [(1.0, true), (2.0, false), (5.0, false)] {
            let ns = m * 10f64.powf(d);
            if ns.log10() > y_hi + 1e-9 {
                continue;
            }
            let y = py(ns);
            let colour = if strong { "#ccc" } else { "#eee" };
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}"/>"#,
                LEFT + pw
            );
            if strong {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    LEFT - 8.0,
                    y + 4.0,
                    duration(ns)
                );
            }
        }
        d += 1.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 20.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(22,{:.1}) rotate(-90)" text-anchor="middle">round-trip time</text>"#,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
    );
    for (i, (name, h)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = points
            .iter()
            .map(|&x| {
                format!(
                    "{:.1},{:.1}",
                    px(x),
                    py(h.value_at_quantile(quantile(x)) as f64)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        let ly = TOP + 10.0 + 22.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{1:.1}" x2="{2:.1}" y2="{1:.1}" stroke="{colour}" stroke-width="3"/><text x="{3:.1}" y="{4:.1}">{5} (p50 {6})</text>"#,
            LEFT + pw + 15.0,
            ly,
            LEFT + pw + 40.0,
            LEFT + pw + 46.0,
            ly + 4.0,
            escape(name),
            measured(h.value_at_quantile(0.5))
        );
    }
    s.push_str("</svg>\n");
    s
}
