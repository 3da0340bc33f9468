//! `nnc plot` and `nnc train --plot`: a training log's curves as an SVG
//! or PNG picture (plotters).
//!
//! The log is what `nnc train --log` writes: one JSON object a line, with
//! an `epoch` and the epoch's figures. Every figure is a curve over the
//! epochs, in a panel of its own, except that `train_X` and `val_X` share
//! the panel `X` (the training and validation loss on one chart); panels
//! come in the order the log first names them, in a grid of one to three
//! columns, each [`PANEL`] pixels. A null figure (not finite, or no
//! validation rows) leaves a gap; a figure that is never a number has no
//! curve; one beyond f32's range is drawn at its edge. A line without an
//! `epoch` is not an epoch's and is passed over; a later line for an
//! epoch replaces an earlier one (a run resumed from an earlier
//! checkpoint).
//!
//! The text of a PNG is drawn with DejaVu Sans, embedded (a subset, see
//! `assets/fonts`), so no system font library is needed; an SVG names the
//! font family and the viewer draws it.
//!
//! The picture is written to a temporary file renamed into place, so a
//! viewer never sees half a picture (`--plot` redraws it as epochs end).

use super::args::PlotArgs;
use super::outcome::Outcome;
use crate::diag::{self, code, Diag, Diagnostics, SourceMap};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The size of one panel in pixels.
pub const PANEL: (u32, u32) = (480, 320);

/// The font the text is laid out and drawn with.
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

/// What a picture is, by its file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Svg,
    Png,
}

impl Kind {
    pub fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Kind::Svg),
            "png" => Some(Kind::Png),
            _ => None,
        }
    }
}

/// A picture's path for `-o` and `--plot`: its extension says the kind.
pub fn parse_picture(s: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(s);
    match Kind::of(&path) {
        Some(_) => Ok(path),
        None => Err(
            "the extension says what to draw, and it is not .svg or .png (e.g. curves.svg or curves.png)"
                .into(),
        ),
    }
}

/// One figure over the epochs.
#[derive(Debug)]
struct Series {
    /// The log's key (`val_loss`), the legend's text.
    key: String,
    /// (epoch, value) for every epoch, `None` where the log has none.
    points: Vec<(i64, Option<f64>)>,
}

/// The figures that share a chart.
#[derive(Debug)]
struct Panel {
    title: String,
    series: Vec<Series>,
}

/// A log read for drawing.
#[derive(Debug)]
pub struct Curves {
    panels: Vec<Panel>,
    first: i64,
    last: i64,
}

impl Curves {
    /// The panels' titles, in drawing order.
    pub fn titles(&self) -> Vec<&str> {
        self.panels.iter().map(|p| p.title.as_str()).collect()
    }

    /// The picture's size: a grid of panels, up to three a row.
    pub fn size(&self) -> (u32, u32) {
        let (cols, rows) = grid(self.panels.len());
        (cols * PANEL.0, rows * PANEL.1)
    }
}

/// (columns, rows) for `n` panels.
fn grid(n: usize) -> (u32, u32) {
    let cols = match n {
        0 | 1 => 1,
        2..=4 => 2,
        _ => 3,
    };
    (cols as u32, n.div_ceil(cols).max(1) as u32)
}

/// Reads a log's text; `name` is the file's, for messages.
pub fn read(text: &str, name: &str) -> Result<Curves, Diag> {
    let help = |d: Diag, h: &str| d.with_notes(vec![format!("help: {h}")]);
    let mut epochs: BTreeMap<i64, serde_json::Map<String, Value>> = BTreeMap::new();
    let mut keys: Vec<String> = Vec::new();
    let mut lines = 0;
    for (k, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let at = format!("{name}:{}", k + 1);
        let obj = match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                return Err(help(
                    diag::error(code::FILE, format!("{at}: the line is not a JSON object")),
                    "a log holds one object a line, as `nnc train --log` writes them",
                ))
            }
            Err(e) => {
                return Err(help(
                    diag::error(code::FILE, format!("{at}: the line is not JSON ({e})")),
                    "a log holds one object a line, as `nnc train --log` writes them; a line cut short by a crash can be deleted",
                ))
            }
        };
        let epoch = match obj.get("epoch") {
            None => continue,
            Some(v) => match v.as_u64().filter(|&e| e <= u64::from(u32::MAX)) {
                Some(e) => e as i64,
                None => {
                    return Err(help(
                        diag::error(
                            code::FILE,
                            format!(
                            "{at}: `epoch` is {v}, not an epoch number (a whole number below 2^32)"
                        ),
                        ),
                        "an epoch's line has its number, from 1, under `epoch`",
                    ))
                }
            },
        };
        for key in obj.keys() {
            if key != "epoch" && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        epochs.insert(epoch, obj);
    }
    if lines == 0 {
        return Err(help(
            diag::error(code::FILE, format!("`{name}` is empty")),
            "`nnc train --log FILE` writes a line to it after every epoch",
        ));
    }
    let (Some(&first), Some(&last)) = (epochs.keys().next(), epochs.keys().next_back()) else {
        return Err(help(
            diag::error(code::FILE, format!("`{name}` holds no epoch")),
            "an epoch's line has an `epoch` number, as `nnc train --log` writes it",
        ));
    };
    let mut panels: Vec<Panel> = Vec::new();
    for key in keys {
        let points: Vec<(i64, Option<f64>)> = epochs
            .iter()
            .map(|(&e, obj)| (e, obj.get(&key).and_then(Value::as_f64).map(in_range)))
            .collect();
        if points.iter().all(|(_, v)| v.is_none()) {
            continue;
        }
        let title = key
            .strip_prefix("train_")
            .or_else(|| key.strip_prefix("val_"))
            .unwrap_or(&key)
            .to_string();
        let series = Series { key, points };
        match panels.iter_mut().find(|p| p.title == title) {
            Some(p) => p.series.push(series),
            None => panels.push(Panel {
                title,
                series: vec![series],
            }),
        }
    }
    if panels.is_empty() {
        return Err(help(
            diag::error(code::FILE, format!("`{name}` holds epochs but no figures")),
            "an epoch's line has numbers beside its `epoch`: `train_loss`, `val_loss`, …",
        ));
    }
    Ok(Curves {
        panels,
        first,
        last,
    })
}

/// `v` within f32's range, where every figure `nnc train` logs is: a
/// chart's span (max − min) stays finite.
fn in_range(v: f64) -> f64 {
    let max = f64::from(f32::MAX);
    v.clamp(-max, max)
}

/// The picture's bytes.
pub fn render(curves: &Curves, kind: Kind) -> Result<Vec<u8>, String> {
    register_font();
    let (w, h) = curves.size();
    match kind {
        Kind::Svg => {
            let mut text = String::new();
            {
                let root = SVGBackend::with_string(&mut text, (w, h)).into_drawing_area();
                draw(&root, curves).map_err(|e| e.to_string())?;
                root.present().map_err(|e| e.to_string())?;
            }
            Ok(text.into_bytes())
        }
        Kind::Png => {
            let mut pixels = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut pixels, (w, h)).into_drawing_area();
                draw(&root, curves).map_err(|e| e.to_string())?;
                root.present().map_err(|e| e.to_string())?;
            }
            let mut bytes = Vec::new();
            let mut enc = png::Encoder::new(&mut bytes, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().map_err(|e| e.to_string())?;
            writer
                .write_image_data(&pixels)
                .map_err(|e| e.to_string())?;
            writer.finish().map_err(|e| e.to_string())?;
            Ok(bytes)
        }
    }
}

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is ours and known good: a failure here is a broken
        // build, and would show as text that cannot be drawn.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Every panel on its cell of `root`.
fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &Curves) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (cols, rows) = grid(curves.panels.len());
    let cells = root.split_evenly((rows as usize, cols as usize));
    for (panel, cell) in curves.panels.iter().zip(&cells) {
        draw_panel(cell, panel, curves.first, curves.last)?;
    }
    Ok(())
}

/// Training figures blue, validation ones orange, others green.
fn colour(key: &str) -> RGBColor {
    if key.starts_with("val_") {
        RGBColor(255, 127, 14)
    } else if key.starts_with("train_") {
        RGBColor(31, 119, 180)
    } else {
        RGBColor(44, 160, 44)
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
    first: i64,
    last: i64,
) -> DrawResult<DB> {
    let values = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().filter_map(|p| p.1))
    };
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(f64::NEG_INFINITY, f64::max);
    let pad = match hi - lo {
        d if d > 0.0 => d * 0.05,
        _ => (hi.abs() * 0.05).max(0.05),
    };
    let xs = match first < last {
        true => first..last,
        false => first - 1..last + 1,
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FAMILY, 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(xs, lo - pad..hi + pad)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(panel.title.as_str())
        .x_labels(((last - first + 1) as usize).clamp(2, 10))
        .y_label_formatter(&|v| tick(*v))
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 14))
        .light_line_style(RGBColor(240, 240, 240))
        .draw()?;
    let markers = last - first < 40;
    for s in &panel.series {
        let c = colour(&s.key);
        let style = c.stroke_width(2);
        // A gap (a null) ends a line; each run of values is one.
        let mut runs: Vec<Vec<(i64, f64)>> = vec![Vec::new()];
        for &(e, v) in &s.points {
            match v {
                Some(v) => runs.last_mut().into_iter().for_each(|r| r.push((e, v))),
                None => runs.push(Vec::new()),
            }
        }
        runs.retain(|r| !r.is_empty());
        chart
            .draw_series(runs.iter().map(|r| PathElement::new(r.clone(), style)))?
            .label(s.key.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        if markers {
            chart.draw_series(
                runs.iter()
                    .flatten()
                    .map(|&p| Circle::new(p, 3, c.filled())),
            )?;
        }
    }
    // The legend in the corner the curves leave the most room in.
    let (x0, x1) = (first as f64, last.max(first + 1) as f64);
    let (y0, y1) = (lo - pad, hi + pad);
    let crowd = |right: bool, top: bool| {
        let points = panel.series.iter().flat_map(|s| s.points.iter());
        points
            .filter_map(|&(e, v)| Some(((e as f64 - x0) / (x1 - x0), (v? - y0) / (y1 - y0))))
            .filter(|&(fx, fy)| {
                let across = if right { fx > 0.55 } else { fx < 0.45 };
                let up = if top { fy > 0.6 } else { fy < 0.4 };
                across && up
            })
            .count()
    };
    let corners = [
        (SeriesLabelPosition::UpperRight, true, true),
        (SeriesLabelPosition::LowerRight, true, false),
        (SeriesLabelPosition::UpperLeft, false, true),
        (SeriesLabelPosition::LowerLeft, false, false),
    ];
    let corner = corners
        .into_iter()
        .min_by_key(|&(_, right, top)| crowd(right, top))
        .map_or(SeriesLabelPosition::UpperRight, |c| c.0);
    chart
        .configure_series_labels()
        .position(corner)
        .label_font((FAMILY, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()?;
    Ok(())
}

/// A tick's text: three significant digits, exponents for tiny and huge
/// values (a learning rate of 1e-4).
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        match s {
            "-0" => "0".into(),
            s => s.into(),
        }
    }
}

/// Draws `curves` to `path` through a temporary file.
pub fn write(curves: &Curves, path: &Path) -> Result<(), Diag> {
    let kind = Kind::of(path).unwrap_or(Kind::Svg);
    let bytes = render(curves, kind).map_err(|e| {
        diag::error(
            code::INTERNAL,
            format!("drawing `{}` failed: {e}", path.display()),
        )
    })?;
    crate::train::checkpoint::write_atomic(path, &bytes).map_err(|e| {
        diag::error(
            code::FILE,
            format!(
                "cannot write `{}`: {}",
                path.display(),
                crate::pipeline::io_reason(&e)
            ),
        )
        .with_notes(vec![
            "help: choose a folder that exists and that you can write to".into(),
        ])
    })
}

/// `nnc plot LOG -o PICTURE`.
pub fn command(args: &PlotArgs) -> Result<Outcome, Outcome> {
    let fail = Outcome::failed;
    let name = args.log.display().to_string();
    let text = std::fs::read(&args.log).map_err(|e| {
        fail(
            diag::error(
                code::FILE,
                format!("cannot read `{name}`: {}", crate::pipeline::io_reason(&e)),
            )
            .with_notes(vec![
                "help: give the file `nnc train --log FILE` wrote".into()
            ]),
        )
    })?;
    let text = String::from_utf8_lossy(&text);
    let curves = read(&text, &name).map_err(fail)?;
    write(&curves, &args.output).map_err(fail)?;
    Ok(Outcome {
        stdout: format!(
            "wrote {}: {} (epochs {} to {})\n",
            args.output.display(),
            curves.titles().join(", "),
            curves.first,
            curves.last
        ),
        sources: SourceMap::new(),
        diags: Diagnostics::new(),
    })
}

/// `nnc train --plot`: the picture redrawn as epochs end.
///
/// Drawing a PNG takes tens of milliseconds, longer than an epoch of a
/// small model: the picture is redrawn after an epoch when [`REDRAW`] has
/// passed since the last drawing, and always after the last epoch.
pub struct Live {
    path: PathBuf,
    /// `--log`'s file, which holds the epochs before a resumed run's.
    log: Option<PathBuf>,
    /// The log's lines so far (none before the run's first epoch).
    text: String,
    /// When the picture was last drawn.
    drawn: Option<std::time::Instant>,
    /// Epochs have ended since.
    pending: bool,
    error: Option<Diag>,
}

/// The least time between two drawings of `--plot`'s picture.
pub const REDRAW: std::time::Duration = std::time::Duration::from_secs(1);

impl Live {
    /// Checks that `path`'s folder exists, before training starts.
    pub fn new(path: &Path, log: Option<&Path>) -> Result<Live, Diag> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(diag::error(
                code::FILE,
                format!(
                    "cannot write `{}`: the folder `{}` does not exist",
                    path.display(),
                    dir.display()
                ),
            )
            .with_notes(vec!["help: create it, or choose another path".into()]));
        }
        Ok(Live {
            path: path.to_path_buf(),
            log: log.map(Path::to_path_buf),
            text: String::new(),
            drawn: None,
            pending: false,
            error: None,
        })
    }

    /// Adds the epoch's figures (the line the log gets) and redraws when
    /// it is time; a run resumed after epoch 1 starts from `--log`'s
    /// earlier lines.
    pub fn epoch(&mut self, s: &crate::train::EpochStats) {
        if self.text.is_empty() && s.epoch > 1 {
            if let Some(log) = &self.log {
                self.text = std::fs::read_to_string(log).unwrap_or_default();
            }
        }
        self.text.push_str(&crate::train::log_line(s));
        self.pending = true;
        if self.drawn.is_none_or(|t| t.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        self.pending = false;
        if self.error.is_none() {
            let name = self.path.display().to_string();
            self.error = read(&self.text, &name)
                .and_then(|c| write(&c, &self.path))
                .err();
            self.drawn = Some(std::time::Instant::now());
        }
    }

    /// At the end of the run: draws what is not drawn yet (or `--log`'s
    /// epochs when the run had none of its own: resumed at its last
    /// epoch); returns the first error.
    pub fn finish(mut self) -> Option<Diag> {
        if self.text.is_empty() {
            if let Some(log) = &self.log {
                self.text = std::fs::read_to_string(log).unwrap_or_default();
                self.pending = !self.text.trim().is_empty();
            }
        }
        if self.pending {
            self.draw();
        }
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_and_validation_figures_share_a_panel() {
        let log = concat!(
            r#"{"epoch":1,"train_loss":1.0,"val_loss":1.5,"val_accuracy":null,"lr":0.1}"#,
            "\n",
            r#"{"note":"not an epoch"}"#,
            "\n\n",
            r#"{"epoch":2,"train_loss":0.5,"val_loss":null,"val_accuracy":null,"lr":0.1}"#,
            "\n"
        );
        let c = read(log, "m.jsonl").expect("a log");
        assert_eq!(c.titles(), ["loss", "lr"]);
        assert_eq!((c.first, c.last), (1, 2));
        assert_eq!(c.panels[0].series[1].points, [(1, Some(1.5)), (2, None)]);
        assert_eq!(c.size(), (2 * PANEL.0, PANEL.1));
    }

    #[test]
    fn a_later_line_for_an_epoch_replaces_an_earlier_one() {
        let log = "{\"epoch\":2,\"train_loss\":3}\n{\"epoch\":1,\"train_loss\":1}\n{\"epoch\":2,\"train_loss\":2}\n";
        let c = read(log, "m.jsonl").expect("a log");
        assert_eq!(
            c.panels[0].series[0].points,
            [(1, Some(1.0)), (2, Some(2.0))]
        );
    }

    #[test]
    fn a_malformed_line_is_named_by_its_number() {
        let e = read("{\"epoch\":1,\"train_loss\":1}\n{\"epoch\":2,", "m.jsonl").unwrap_err();
        assert!(
            e.message.starts_with("m.jsonl:2: the line is not JSON"),
            "{}",
            e.message
        );
        let e = read("[1, 2]\n", "m.jsonl").unwrap_err();
        assert_eq!(e.message, "m.jsonl:1: the line is not a JSON object");
        let e = read("{\"epoch\":-1}\n", "m.jsonl").unwrap_err();
        assert_eq!(
            e.message,
            "m.jsonl:1: `epoch` is -1, not an epoch number (a whole number below 2^32)"
        );
    }

    /// A span of ±1e308 overflowed to an infinite axis, on which the
    /// ticks were never found (the drawing never ended).
    #[test]
    fn figures_beyond_f32_are_drawn_at_its_edge() {
        let log = "{\"epoch\":1,\"train_loss\":1e308}\n{\"epoch\":2,\"train_loss\":-1e308}\n";
        let c = read(log, "m.jsonl").expect("a log");
        let max = f64::from(f32::MAX);
        assert_eq!(
            c.panels[0].series[0].points,
            [(1, Some(max)), (2, Some(-max))]
        );
        let svg = render(&c, Kind::Svg).expect("drawn");
        assert!(svg.starts_with(b"<svg"));
    }

    #[test]
    fn the_grid_has_up_to_three_columns() {
        assert_eq!(grid(1), (1, 1));
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(7), (3, 3));
    }

    #[test]
    fn ticks_have_few_digits() {
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.0 / 3.0), "0.3333");
        assert_eq!(tick(0.0001), "1.0e-4");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(-0.00001), "-1.0e-5");
    }
}
