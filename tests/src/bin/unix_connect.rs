//! unix-connect: join stdin/stdout to a unix stream socket, so OpenSSH can reach an
//! agent listening on `unix:/path` with `-o ProxyCommand='unix-connect /path'`.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::thread;

fn main() -> ExitCode {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: unix-connect <socket path>");
        return ExitCode::from(2);
    };
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("unix-connect: {}: {e}", path.to_string_lossy());
            return ExitCode::from(1);
        }
    };
    let Ok(mut to_socket) = stream.try_clone() else {
        return ExitCode::from(1);
    };
    let upstream = thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 32 * 1024];
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || to_socket.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to_socket.shutdown(Shutdown::Write);
    });
    let mut from_socket = stream;
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 32 * 1024];
    while let Ok(n) = from_socket.read(&mut buf) {
        if n == 0 || stdout.write_all(&buf[..n]).is_err() || stdout.flush().is_err() {
            break;
        }
    }
    drop(upstream);
    ExitCode::SUCCESS
}
