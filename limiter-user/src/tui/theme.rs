//! Styles by meaning (banned, over threshold, stale), with a monochrome variant for
//! `NO_COLOR` (https://no-color.org): there the rows that matter stand out by weight and
//! reverse video, never by colour alone, and every state is also a word on screen.

use ratatui::style::{Color, Modifier, Style};

use crate::control::protocol::SourceState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    pub const COLOR: Theme = Theme { color: true };
    pub const MONOCHROME: Theme = Theme { color: false };

    /// Colour unless `NO_COLOR` is set to anything but the empty string.
    pub fn from_env() -> Theme {
        Theme::for_no_color(std::env::var_os("NO_COLOR").as_deref())
    }

    pub fn for_no_color(value: Option<&std::ffi::OsStr>) -> Theme {
        match value {
            Some(v) if !v.is_empty() => Theme::MONOCHROME,
            _ => Theme::COLOR,
        }
    }

    fn pick(self, color: Style, mono: Style) -> Style {
        if self.color {
            color
        } else {
            mono
        }
    }

    /// A source row, by state: over threshold is the loudest (not handled yet), banned next.
    pub fn state(self, state: SourceState) -> Style {
        match state {
            SourceState::OverThreshold => self.pick(
                Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
                Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            ),
            SourceState::Banned => self.pick(
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
                Style::new().add_modifier(Modifier::BOLD),
            ),
            SourceState::Allowed => self.pick(Style::new().fg(Color::Green), Style::new()),
            SourceState::Ok => Style::new(),
        }
    }

    pub fn selected(self) -> Style {
        self.pick(
            Style::new()
                .bg(Color::DarkGray)
                .add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::REVERSED),
        )
    }

    pub fn title(self) -> Style {
        self.pick(
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::BOLD),
        )
    }

    pub fn column_header(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
    }

    pub fn dim(self) -> Style {
        self.pick(
            Style::new().fg(Color::DarkGray),
            Style::new().add_modifier(Modifier::DIM),
        )
    }

    /// The daemon is unreachable, an action failed.
    pub fn alarm(self) -> Style {
        self.pick(
            Style::new()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD),
        )
    }

    /// Something works less well than it should: the cluster is degraded.
    pub fn warning(self) -> Style {
        self.pick(
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        )
    }

    pub fn good(self) -> Style {
        self.pick(Style::new().fg(Color::Green), Style::new())
    }

    /// Samples at or over their threshold in a sparkline.
    pub fn over(self) -> Style {
        self.pick(
            Style::new().fg(Color::Red),
            Style::new().add_modifier(Modifier::BOLD),
        )
    }

    pub fn key(self) -> Style {
        self.pick(
            Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            Style::new().add_modifier(Modifier::BOLD),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_means_any_non_empty_value() {
        assert_eq!(Theme::for_no_color(None), Theme::COLOR);
        assert_eq!(Theme::for_no_color(Some("".as_ref())), Theme::COLOR);
        assert_eq!(Theme::for_no_color(Some("1".as_ref())), Theme::MONOCHROME);
    }

    #[test]
    fn monochrome_uses_no_colour_at_all() {
        let theme = Theme::MONOCHROME;
        for style in [
            theme.state(SourceState::OverThreshold),
            theme.state(SourceState::Banned),
            theme.selected(),
            theme.alarm(),
            theme.warning(),
            theme.over(),
            theme.dim(),
        ] {
            assert_eq!((style.fg, style.bg), (None, None), "{style:?}");
        }
        assert_ne!(
            theme.state(SourceState::Banned),
            theme.state(SourceState::Ok),
            "banned rows stand out without colour"
        );
    }
}
