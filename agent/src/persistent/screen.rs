//! A persistent session's terminal state: the screen its output has drawn (vt100),
//! so a client that attaches sees what is there now, not a replay.

use bytes::Bytes;
use portable_pty::PtySize;

/// The emulated screen's bound, whatever size the terminal claims: memory is two
/// grids (main and alternate) of 32-byte cells, so at most 200 × 500 × 64 B ≈ 6 MiB.
const MAX_ROWS: u16 = 200;
const MAX_COLS: u16 = 500;

/// Switches a client's terminal to the alternate screen (full-screen programs).
const ENTER_ALTERNATE_SCREEN: &[u8] = b"\x1b[?1049h";

pub struct Screen {
    parser: vt100::Parser,
}

impl Screen {
    pub fn new(size: PtySize) -> Screen {
        let (rows, cols) = bounded(size);
        // No scrollback: a re-attach shows the screen, as tmux does on attach.
        Screen {
            parser: vt100::Parser::new(rows, cols, 0),
        }
    }

    pub fn process(&mut self, output: &[u8]) {
        self.parser.process(output);
    }

    pub fn resize(&mut self, size: PtySize) {
        let (rows, cols) = bounded(size);
        self.parser.screen_mut().set_size(rows, cols);
    }

    /// Escape codes that draw the current screen on a client's terminal: its contents,
    /// attributes, cursor, and input modes (application keys, bracketed paste, mouse).
    pub fn redraw(&self) -> Bytes {
        let screen = self.parser.screen();
        let mut out = Vec::new();
        if screen.alternate_screen() {
            out.extend_from_slice(ENTER_ALTERNATE_SCREEN);
        }
        out.extend_from_slice(&screen.state_formatted());
        Bytes::from(out)
    }
}

fn bounded(size: PtySize) -> (u16, u16) {
    (size.rows.clamp(1, MAX_ROWS), size.cols.clamp(1, MAX_COLS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(rows: u16, cols: u16) -> PtySize {
        PtySize {
            rows,
            cols,
            pixel_width: 0,
            pixel_height: 0,
        }
    }

    #[test]
    fn a_redraw_reproduces_the_screen_not_the_log() {
        let mut screen = Screen::new(size(4, 20));
        for i in 0..10 {
            screen.process(format!("line {i}\r\n").as_bytes());
        }
        let mut replay = vt100::Parser::new(4, 20, 0);
        replay.process(&screen.redraw());
        assert_eq!(
            replay.screen().contents(),
            screen.parser.screen().contents()
        );
        assert!(replay.screen().contents().contains("line 9"));
        assert!(!replay.screen().contents().contains("line 5"));
        assert_eq!(
            replay.screen().cursor_position(),
            screen.parser.screen().cursor_position()
        );
    }

    #[test]
    fn huge_terminals_are_bounded() {
        let screen = Screen::new(size(u16::MAX, u16::MAX));
        assert_eq!(screen.parser.screen().size(), (MAX_ROWS, MAX_COLS));
        let screen = Screen::new(size(0, 0));
        assert_eq!(screen.parser.screen().size(), (1, 1));
    }
}
