//! A sparkline that marks a threshold, which ratatui's own does not.
//!
//! One row high, its top is the threshold: a full block `█` means at or over the limit (in
//! the "over" style), lower bars are fractions of it. Taller, the scale leaves room above the
//! threshold and a dotted line `┄` marks it wherever a bar does not reach it. Without a
//! threshold the scale is the largest sample. Zero is a baseline `▁` (dim), a missing sample a
//! blank, so "quiet" and "unknown" look different.

use ratatui::{buffer::Buffer, layout::Rect, style::Style, widgets::Widget};

const EIGHTHS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Taller sparklines scale to this much above the threshold, so its line is visible below
/// the bars that cross it.
const HEADROOM: f64 = 1.25;

pub struct ThresholdSparkline<'a> {
    /// Oldest first; the newest are drawn at the right edge. `NaN`: no data.
    pub samples: &'a [f32],
    pub threshold: Option<f64>,
    pub style: Style,
    pub over_style: Style,
    pub baseline_style: Style,
}

impl ThresholdSparkline<'_> {
    fn top(&self, height: u16) -> f64 {
        let largest = self
            .samples
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |max, &v| max.max(f64::from(v)));
        match self.threshold {
            Some(limit) if limit > 0.0 && height == 1 => limit,
            Some(limit) if limit > 0.0 => largest.max(limit * HEADROOM),
            _ => largest,
        }
    }
}

impl Widget for ThresholdSparkline<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.is_empty() {
            return;
        }
        let width = usize::from(area.width);
        let shown = &self.samples[self.samples.len().saturating_sub(width)..];
        // Right-aligned: the newest sample sits at the right edge.
        let left = area.x + (width - shown.len()) as u16;
        let eighths_high = u32::from(area.height) * 8;
        let top = self.top(area.height);
        let threshold_eighths = self
            .threshold
            .filter(|_| area.height > 1 && top > 0.0)
            .map(|limit| ((limit / top) * f64::from(eighths_high)).round() as u32);
        for (i, &sample) in shown.iter().enumerate() {
            let x = left + i as u16;
            if !sample.is_finite() {
                continue;
            }
            let value = f64::from(sample.max(0.0));
            let over = self
                .threshold
                .is_some_and(|limit| limit > 0.0 && value >= limit);
            let level = if value <= 0.0 || top <= 0.0 {
                0
            } else {
                (((value / top) * f64::from(eighths_high)).ceil() as u32).clamp(1, eighths_high)
            };
            let style = if over { self.over_style } else { self.style };
            for row in 0..area.height {
                let y = area.bottom() - 1 - row;
                let in_row = level.saturating_sub(u32::from(row) * 8).min(8);
                let cell = &mut buf[(x, y)];
                if in_row > 0 {
                    cell.set_char(EIGHTHS[in_row as usize]).set_style(style);
                } else if row == 0 && level == 0 {
                    cell.set_char('▁').set_style(self.baseline_style);
                } else if threshold_eighths.is_some_and(|t| t > 0 && (t - 1) / 8 == u32::from(row))
                {
                    cell.set_char('┄').set_style(self.baseline_style);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(samples: &[f32], threshold: Option<f64>, width: u16, height: u16) -> Vec<String> {
        let area = Rect::new(0, 0, width, height);
        let mut buf = Buffer::empty(area);
        ThresholdSparkline {
            samples,
            threshold,
            style: Style::new(),
            over_style: Style::new(),
            baseline_style: Style::new(),
        }
        .render(area, &mut buf);
        (0..height)
            .map(|y| (0..width).map(|x| buf[(x, y)].symbol()).collect())
            .collect()
    }

    #[test]
    fn one_row_tops_out_at_the_threshold() {
        assert_eq!(
            draw(&[0.0, 15.0, 30.0, 60.0, 300.0, f32::NAN], Some(60.0), 6, 1),
            ["▁▂▄██ "]
        );
    }

    #[test]
    fn taller_ones_draw_the_threshold_line() {
        let rows = draw(&[0.0, 10.0, 100.0], Some(80.0), 3, 2);
        // top = 100: the limit of 80 is 12.8 of 16 eighths, in the upper row.
        assert_eq!(rows, ["┄┄█", "▁▂█"]);
    }

    #[test]
    fn newest_samples_are_on_the_right_and_old_ones_scroll_off() {
        let samples: Vec<f32> = (1..=10).map(|v| v as f32).collect();
        assert_eq!(draw(&samples, None, 4, 1), ["▆▇██"]);
        assert_eq!(draw(&[5.0], None, 3, 1), ["  █"]);
    }
}
