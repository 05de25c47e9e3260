//! The interactive console's line editing, for a client whose terminal is raw:
//! echo, backspace (a whole UTF-8 character), Ctrl-U, Ctrl-C, Ctrl-D on an empty
//! line, Enter; escape sequences (arrow keys) are ignored. Without a terminal,
//! lines end at `\n` and nothing is echoed.

/// The longest line kept; typing beyond it is ignored.
const MAX_LINE: usize = 4096;

/// What one byte of input did.
pub struct Fed {
    /// What to send back to the terminal.
    pub echo: Vec<u8>,
    pub edit: Edit,
}

pub enum Edit {
    None,
    /// A finished line.
    Line(String),
    /// The line was dropped (Ctrl-C): prompt again.
    Cancel,
    /// Ctrl-D on an empty line.
    Quit,
}

#[derive(Default)]
pub struct LineEditor {
    line: Vec<u8>,
    /// Inside an escape sequence: 1 after ESC, 2 inside `ESC [`.
    escape: u8,
}

impl LineEditor {
    pub fn feed(&mut self, byte: u8, terminal: bool) -> Fed {
        let quiet = |edit| Fed {
            echo: Vec::new(),
            edit,
        };
        if !terminal {
            return match byte {
                b'\n' => quiet(Edit::Line(self.take())),
                b'\r' => quiet(Edit::None),
                _ => {
                    self.push(byte);
                    quiet(Edit::None)
                }
            };
        }
        if self.escape == 1 {
            self.escape = if byte == b'[' || byte == b'O' { 2 } else { 0 };
            return quiet(Edit::None);
        }
        if self.escape == 2 {
            if (0x40..=0x7e).contains(&byte) {
                self.escape = 0;
            }
            return quiet(Edit::None);
        }
        match byte {
            b'\r' | b'\n' => Fed {
                echo: b"\r\n".to_vec(),
                edit: Edit::Line(self.take()),
            },
            0x7f | 0x08 => {
                if self.pop_char() {
                    Fed {
                        echo: b"\x08 \x08".to_vec(),
                        edit: Edit::None,
                    }
                } else {
                    quiet(Edit::None)
                }
            }
            0x15 => {
                let mut echo = Vec::new();
                while self.pop_char() {
                    echo.extend_from_slice(b"\x08 \x08");
                }
                Fed {
                    echo,
                    edit: Edit::None,
                }
            }
            0x03 => {
                self.line.clear();
                Fed {
                    echo: b"^C\r\n".to_vec(),
                    edit: Edit::Cancel,
                }
            }
            0x04 if self.line.is_empty() => Fed {
                echo: b"\r\n".to_vec(),
                edit: Edit::Quit,
            },
            0x1b => {
                self.escape = 1;
                quiet(Edit::None)
            }
            b if b >= 0x20 => {
                if self.push(b) {
                    Fed {
                        echo: vec![b],
                        edit: Edit::None,
                    }
                } else {
                    quiet(Edit::None)
                }
            }
            _ => quiet(Edit::None),
        }
    }

    fn push(&mut self, byte: u8) -> bool {
        if self.line.len() >= MAX_LINE {
            return false;
        }
        self.line.push(byte);
        true
    }

    /// Removes the last character (all bytes of a UTF-8 one); false if none.
    fn pop_char(&mut self) -> bool {
        let Some(last) = self.line.pop() else {
            return false;
        };
        if last >= 0x80 {
            while self.line.last().is_some_and(|b| (0x80..0xc0).contains(b)) {
                self.line.pop();
            }
            // `last` was a continuation byte: its lead byte goes too.
            if (0x80..0xc0).contains(&last) {
                self.line.pop();
            }
        }
        true
    }

    fn take(&mut self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(editor: &mut LineEditor, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if let Edit::Line(line) = editor.feed(b, true).edit {
                lines.push(line);
            }
        }
        lines
    }

    #[test]
    fn lines_are_edited_as_typed() {
        let mut e = LineEditor::default();
        assert_eq!(typed(&mut e, b"lx\x7fs --json\r"), ["ls --json"]);
        // Arrow keys are ignored, Ctrl-U clears the line.
        assert_eq!(typed(&mut e, b"\x1b[Ahelp\x15ls\r"), ["ls"]);
        // Backspace removes a whole UTF-8 character.
        assert_eq!(typed(&mut e, "né\x7f\x7fo\r".as_bytes()), ["o"]);
        assert!(matches!(e.feed(0x04, true).edit, Edit::Quit));
        // Without a terminal: lines end at \n, nothing is echoed.
        let fed = e.feed(b'x', false);
        assert!(fed.echo.is_empty());
        assert!(matches!(e.feed(b'\n', false).edit, Edit::Line(l) if l == "x"));
    }
}
