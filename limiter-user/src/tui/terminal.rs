//! Taking the terminal over and giving it back: raw mode and the alternate screen on entry;
//! on exit, on error and on panic the terminal is restored before anything is printed, so a
//! crash leaves a usable shell and a readable message.

use std::{
    io::{self, IsTerminal, Stdout},
    sync::Once,
};

use ratatui::{
    backend::CrosstermBackend,
    crossterm::{
        cursor::{Hide, Show},
        execute,
        terminal::{disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen},
    },
    Terminal,
};

use super::TuiError;

/// The terminal, restored when dropped.
pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub fn enter() -> Result<TerminalGuard, TuiError> {
        if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
            return Err(TuiError::NotATerminal);
        }
        install_panic_hook();
        enable_raw_mode().map_err(TuiError::Terminal)?;
        if let Err(error) = execute!(io::stdout(), EnterAlternateScreen, Hide) {
            let _ = restore();
            return Err(TuiError::Terminal(error));
        }
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(error) => {
                let _ = restore();
                Err(TuiError::Terminal(error))
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = restore();
    }
}

/// Leaves raw mode and the alternate screen and shows the cursor. Harmless when the terminal
/// is already restored.
pub fn restore() -> io::Result<()> {
    let raw = disable_raw_mode();
    let screen = execute!(io::stdout(), LeaveAlternateScreen, Show);
    raw.and(screen)
}

/// Restores the terminal before the default hook prints the panic, which would otherwise be
/// drawn into the alternate screen and lost with it.
fn install_panic_hook() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let _ = restore();
            previous(info);
        }));
    });
}
