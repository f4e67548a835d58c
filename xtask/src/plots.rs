//! `cargo xtask plots`: PNG charts in docs/bench/ from the results in target/bench/*.json.
//!
//! Reading the JSON into series is pure and unit-tested; drawing is a thin shell over plotters.
//! A missing result file skips its charts with a note, so a partial bench run still plots.

use std::{fs, path::Path};

use anyhow::{anyhow, Context, Result};
use plotters::{
    prelude::*,
    style::{
        register_font,
        text_anchor::{HPos, Pos, VPos},
        FontStyle,
    },
};
use serde::{de::DeserializeOwned, Deserialize};

use crate::cmd;

/// The font every label is drawn with, from Debian's fonts-dejavu-core (set-up installs it).
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const SIZE: (u32, u32) = (900, 500);
const BAR: RGBColor = RGBColor(70, 110, 170);
const RECEIVE: RGBColor = RGBColor(200, 80, 40);
const PROGRAM: RGBColor = RGBColor(40, 110, 180);

pub fn run() -> Result<()> {
    let root = cmd::workspace_root();
    let (input, output) = (root.join("target/bench"), root.join("docs/bench"));
    let font = fs::read(FONT)
        .with_context(|| format!("cannot read {FONT}; run `cargo xtask setup` as root"))?;
    // plotters keeps the font for the whole process; it is read once per run.
    register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))?;
    fs::create_dir_all(&output).with_context(|| format!("cannot create {}", output.display()))?;

    if let Some(flood) = read::<Flood>(&input.join("flood.json"))? {
        hbars(
            &output.join("flood.png"),
            "Dropping a banned SYN flood: packets/s the receiving CPU sustains",
            "million packets/s (median of the runs; whiskers: min to max)",
            &flood_rate_bars(&flood),
        )?;
        hbars(
            &output.join("flood_cost.png"),
            "CPU time the receiving CPU spends per flood packet",
            "ns per packet (lower is better)",
            &flood_cost_bars(&flood),
        )?;
    }
    if let Some(scale) = read::<Scale>(&input.join("scale.json"))? {
        let root = png(&output.join("table_size.png"))?;
        let root = root.titled("Per-packet cost against per-source table size", title())?;
        let [receive, program] = table_size_series(&scale);
        let receive = Line::new("receive path (CPU time)", RECEIVE, "ns", receive);
        let program = Line::new("program (BPF run time)", PROGRAM, "ns", program);
        lines(&root, "ns per packet", true, &[receive, program])?;
        root.present()?;
    }
    if let Some(daemon) = read::<DaemonScale>(&input.join("daemon_scale.json"))? {
        let root = png(&output.join("daemon_scale.png"))?;
        let root = root.titled("Daemon cost against tracked sources", title())?;
        let [poll, rss] = daemon_series(&daemon);
        let panels = root.split_evenly((2, 1));
        let poll = Line::new("poll time", RECEIVE, "ms", poll);
        lines(&panels[0], "poll time, ms (median)", false, &[poll])?;
        let rss = Line::new("resident memory", PROGRAM, "MiB", rss);
        lines(&panels[1], "resident memory, MiB", true, &[rss])?;
        root.present()?;
    }
    Ok(())
}

/// The parsed file, or `None` with a note when it does not exist.
fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("xtask: no {}; skipping its plots", path.display());
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not the expected benchmark result", path.display()))?;
    eprintln!("xtask: plotting {}", path.display());
    Ok(Some(value))
}

// ---- The result files (only the fields plotted; others are ignored) ----

#[derive(Deserialize)]
struct Flood {
    cases: Vec<FloodCase>,
}

#[derive(Deserialize)]
struct FloodCase {
    name: String,
    pps_median: f64,
    pps_min: f64,
    pps_max: f64,
    cpu_ns_per_pkt: f64,
}

#[derive(Deserialize)]
struct Scale {
    table_size: Vec<TableSizePoint>,
}

#[derive(Deserialize)]
struct TableSizePoint {
    capacity: f64,
    sources: f64,
    cpu_ns_per_pkt: f64,
    prog_ns_per_pkt: f64,
}

#[derive(Deserialize)]
struct DaemonScale {
    points: Vec<DaemonPoint>,
}

#[derive(Deserialize)]
struct DaemonPoint {
    sources: f64,
    poll_ms_median: f64,
    rss_mib: f64,
}

// ---- JSON → series (pure) ----

/// One horizontal bar: its label, length, optional min–max whisker and value text.
#[derive(Debug, PartialEq)]
struct Bar {
    label: String,
    value: f64,
    whisker: Option<(f64, f64)>,
    text: String,
}

type Series = Vec<(f64, f64)>;

/// Packets/s in millions per case; a case with no flood (0 pps) has nothing to show.
fn flood_rate_bars(flood: &Flood) -> Vec<Bar> {
    let m = 1e6;
    flood
        .cases
        .iter()
        .filter(|c| c.pps_median > 0.0)
        .map(|c| Bar {
            label: c.name.clone(),
            value: c.pps_median / m,
            whisker: Some((c.pps_min / m, c.pps_max / m)),
            text: format!("{:.2} Mpps", c.pps_median / m),
        })
        .collect()
}

fn flood_cost_bars(flood: &Flood) -> Vec<Bar> {
    flood
        .cases
        .iter()
        .filter(|c| c.cpu_ns_per_pkt > 0.0)
        .map(|c| Bar {
            label: c.name.clone(),
            value: c.cpu_ns_per_pkt,
            whisker: None,
            text: format!("{:.0} ns", c.cpu_ns_per_pkt),
        })
        .collect()
}

/// (sources, ns per packet) for the receive path and for the program, by sources. Only the
/// cases whose table holds all their sources (the churn case, more sources than rows, is a
/// different curve).
fn table_size_series(scale: &Scale) -> [Series; 2] {
    let mut points: Vec<_> = scale
        .table_size
        .iter()
        .filter(|p| p.capacity == p.sources)
        .collect();
    points.sort_by(|a, b| a.sources.total_cmp(&b.sources));
    [
        points
            .iter()
            .map(|p| (p.sources, p.cpu_ns_per_pkt))
            .collect(),
        points
            .iter()
            .map(|p| (p.sources, p.prog_ns_per_pkt))
            .collect(),
    ]
}

/// (sources, poll ms) and (sources, resident MiB), by sources.
fn daemon_series(daemon: &DaemonScale) -> [Series; 2] {
    let mut points: Vec<_> = daemon.points.iter().collect();
    points.sort_by(|a, b| a.sources.total_cmp(&b.sources));
    [
        points
            .iter()
            .map(|p| (p.sources, p.poll_ms_median))
            .collect(),
        points.iter().map(|p| (p.sources, p.rss_mib)).collect(),
    ]
}

/// A count of sources as a tick label: 4096 → "4k", 1048576 → "1M".
fn short_count(n: f64) -> String {
    let (value, unit) = match n {
        n if n >= 1024.0 * 1024.0 => (n / (1024.0 * 1024.0), "M"),
        n if n >= 1024.0 => (n / 1024.0, "k"),
        n => (n, ""),
    };
    if value.fract() == 0.0 {
        format!("{value}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}

/// A tick or value as short as it reads: 500 → "500", 2.5 → "2.5", 0.30000001 → "0.3".
fn number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

// ---- Drawing ----

/// One line of a panel: (sources, value) points, each labelled with its value and unit.
struct Line {
    name: &'static str,
    color: RGBColor,
    unit: &'static str,
    points: Series,
}

impl Line {
    fn new(name: &'static str, color: RGBColor, unit: &'static str, points: Series) -> Self {
        Self {
            name,
            color,
            unit,
            points,
        }
    }
}

type Area = DrawingArea<BitMapBackend<'static>, plotters::coord::Shift>;

fn png(path: &Path) -> Result<Area> {
    // The backend borrows the path for the whole drawing; one leaked path per chart is fine.
    let path: &'static Path = Box::leak(path.to_path_buf().into_boxed_path());
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    eprintln!("xtask: writing {}", path.display());
    Ok(root)
}

fn title() -> TextStyle<'static> {
    ("sans-serif", 20).into_font().into()
}

fn label(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().into()
}

/// Horizontal bars, first case on top, with the value printed beyond each bar.
fn hbars(path: &Path, caption: &str, x_desc: &str, bars: &[Bar]) -> Result<()> {
    if bars.is_empty() {
        eprintln!("xtask: nothing to plot in {}; skipping", path.display());
        return Ok(());
    }
    let root = png(path)?;
    let n = bars.len();
    let reach = |b: &Bar| b.whisker.map_or(b.value, |(_, max)| max);
    let x_max = bars.iter().map(reach).fold(0.0, f64::max) * 1.22;
    // Segment n - 1 - i (counted from the bottom) holds bar i.
    let row = |i: usize| n - 1 - i;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, title())
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(175)
        .build_cartesian_2d(0.0..x_max, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc(x_desc)
        .x_label_formatter(&|x| number(*x))
        .label_style(label(15))
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(r) => bars[row(*r)].label.clone(),
            _ => String::new(),
        })
        .draw()?;
    let whisker_cap = || PathElement::new([(0, -7), (0, 7)], BLACK.stroke_width(2));
    for (i, bar) in bars.iter().enumerate() {
        let (r, y) = (row(i), SegmentValue::CenterOf(row(i)));
        let mut rect = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(r)),
                (bar.value, SegmentValue::Exact(r + 1)),
            ],
            BAR.filled(),
        );
        rect.set_margin(8, 8, 0, 0);
        chart.draw_series([rect])?;
        if let Some((lo, hi)) = bar.whisker {
            chart.draw_series([PathElement::new(
                [(lo, y.clone()), (hi, y.clone())],
                BLACK.stroke_width(2),
            )])?;
            chart
                .draw_series([lo, hi].map(|x| EmptyElement::at((x, y.clone())) + whisker_cap()))?;
        }
        let text_style = label(15).pos(Pos::new(HPos::Left, VPos::Center));
        chart.draw_series([
            EmptyElement::at((reach(bar), y)) + Text::new(bar.text.clone(), (8, 0), text_style)
        ])?;
    }
    root.present()?;
    Ok(())
}

/// One panel of lines with labelled points against tracked sources (log scale, a tick per
/// point); the x axis title only when `x_desc`, the legend only with several lines.
fn lines(area: &Area, y_desc: &str, x_desc: bool, lines: &[Line]) -> Result<()> {
    let all = || lines.iter().flat_map(|l| l.points.iter().copied());
    if all().next().is_none() {
        eprintln!("xtask: no points for {y_desc}; leaving its panel empty");
        return Ok(());
    }
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let x_max = all().map(|p| p.0).fold(0.0, f64::max);
    let y_max = match all().map(|p| p.1).fold(0.0, f64::max) {
        0.0 => 1.0,
        max => max * 1.25,
    };
    let mut ticks: Vec<f64> = all().map(|p| p.0).collect();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(if x_desc { 45 } else { 25 })
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x_min / 1.6..x_max * 1.6)
                .log_scale()
                .with_key_points(ticks),
            0.0..y_max,
        )?;
    let mut mesh = chart.configure_mesh();
    mesh.y_desc(y_desc)
        .light_line_style(TRANSPARENT)
        .label_style(label(15))
        .x_label_formatter(&|x| short_count(*x))
        .y_label_formatter(&|y| number(*y));
    if x_desc {
        mesh.x_desc("tracked sources (log scale)");
    }
    mesh.draw()?;
    let value_style = label(14).pos(Pos::new(HPos::Center, VPos::Bottom));
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.clone(), color.stroke_width(2)).point_size(4))?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(line.points.iter().map(|&(x, y)| {
            let text = format!("{} {}", number(y), line.unit);
            EmptyElement::at((x, y)) + Text::new(text, (0, -8), value_style.clone())
        }))?;
    }
    if lines.len() > 1 {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(label(15))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: DeserializeOwned>(json: &str) -> T {
        serde_json::from_str(json).expect("valid test JSON")
    }

    const FLOOD: &str = r#"{"rounds": 5, "cases": [
        {"name": "no-flood", "pps_median": 0.0, "pps_min": 0.0, "pps_max": 0.0,
         "cpu_ns_per_pkt": 0.0, "legit_p50_ms": 0.1},
        {"name": "xdp-drop-all", "pps_median": 5587031.4, "pps_min": 5142658.8,
         "pps_max": 6310802.6, "cpu_ns_per_pkt": 167.8, "runs": 5}]}"#;

    #[test]
    fn flood_rates_skip_cases_without_a_flood_and_are_in_mpps() {
        let bars = flood_rate_bars(&parse(FLOOD));
        assert_eq!(bars.len(), 1);
        let bar = &bars[0];
        assert_eq!(bar.label, "xdp-drop-all");
        assert!((bar.value - 5.587_031_4).abs() < 1e-9);
        let (lo, hi) = bar.whisker.expect("a min–max whisker");
        assert!((lo - 5.142_658_8).abs() < 1e-9 && (hi - 6.310_802_6).abs() < 1e-9);
        assert_eq!(bar.text, "5.59 Mpps");
    }

    #[test]
    fn flood_costs_are_in_ns_without_whiskers() {
        let bars = flood_cost_bars(&parse(FLOOD));
        assert_eq!(
            bars,
            [Bar {
                label: "xdp-drop-all".into(),
                value: 167.8,
                whisker: None,
                text: "168 ns".into(),
            }]
        );
    }

    #[test]
    fn a_flood_case_without_a_plotted_field_is_an_error() {
        let json = r#"{"cases": [{"name": "x", "pps_median": 1.0}]}"#;
        assert!(serde_json::from_str::<Flood>(json).is_err());
    }

    #[test]
    fn table_size_series_are_sorted_by_sources_and_ignore_other_keys() {
        let scale: Scale = parse(
            r#"{"other": [1, 2], "table_size": [
            {"capacity": 1048576, "sources": 1048576, "cpu_ns_per_pkt": 300.0,
             "prog_ns_per_pkt": 120.0, "pps": 2.0e6},
            {"capacity": 65536, "sources": 1048576, "cpu_ns_per_pkt": 900.0,
             "prog_ns_per_pkt": 500.0},
            {"capacity": 4096, "sources": 4096, "cpu_ns_per_pkt": 250.0,
             "prog_ns_per_pkt": 90.0, "pps": 3.0e6}]}"#,
        );
        let [receive, program] = table_size_series(&scale);
        assert_eq!(receive, [(4096.0, 250.0), (1048576.0, 300.0)]);
        assert_eq!(program, [(4096.0, 90.0), (1048576.0, 120.0)]);
    }

    #[test]
    fn daemon_series_are_poll_time_and_memory_by_sources() {
        let daemon: DaemonScale = parse(
            r#"{"points": [
            {"sources": 65536, "poll_ms_median": 9.5, "rss_mib": 40.0},
            {"sources": 4096, "poll_ms_median": 1.2, "rss_mib": 20.5}]}"#,
        );
        let [poll, rss] = daemon_series(&daemon);
        assert_eq!(poll, [(4096.0, 1.2), (65536.0, 9.5)]);
        assert_eq!(rss, [(4096.0, 20.5), (65536.0, 40.0)]);
    }

    #[test]
    fn source_counts_read_as_binary_thousands_and_millions() {
        assert_eq!(short_count(4096.0), "4k");
        assert_eq!(short_count(65536.0), "64k");
        assert_eq!(short_count(1048576.0), "1M");
        assert_eq!(short_count(1536.0), "1.5k");
        assert_eq!(short_count(100.0), "100");
    }

    #[test]
    fn numbers_drop_needless_decimals() {
        assert_eq!(number(500.0), "500");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(0.1 + 0.2), "0.3");
        assert_eq!(number(270.25), "270.25");
    }
}
