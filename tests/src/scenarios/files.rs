//! Files moved both ways as users move them: `tar` over a pipe, large output,
//! `scp`, `sftp` (and its batch operations), `rsync`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use super::{BULK, q, remote_sha256};
use crate::client::Client;
use crate::process::{Cmd, shell_quote};
use crate::util::{first_word, random_file, sample_tree, sha256sum, tree};

/// `tar c . | ssh host 'tar x -C dir'` and back: EOF both ways, every file intact.
pub fn tar_roundtrip(c: &Client, dir: &str) -> Result<()> {
    let src = c.dir().join("tar-src");
    let back = c.dir().join("tar-back");
    sample_tree(&src)?;
    fs::create_dir_all(&back)?;
    let remote = format!("{dir}/tar-x");
    c.pipeline(&format!(
        "tar c -C {} . | {{ssh}} {}",
        q(&src),
        shell_quote(&format!(
            "mkdir -p {} && tar x -C {}",
            q(&remote),
            q(&remote)
        ))
    ))
    .timeout(BULK)
    .run()?
    .success()
    .context("upload with tar")?;
    c.pipeline(&format!(
        "{{ssh}} {} | tar x -C {}",
        shell_quote(&format!("tar c -C {} .", q(&remote))),
        q(&back)
    ))
    .timeout(BULK)
    .run()?
    .success()
    .context("download with tar")?;
    let (want, got) = (tree(&src)?, tree(&back)?);
    ensure!(
        want == got,
        "tree differs after the round-trip:\nsent: {want:#?}\ngot back: {got:#?}"
    );
    Ok(())
}

/// A large output (`bytes`) streams through intact while the client stalls for a while;
/// `sample` is called during the transfer (e.g. to read the server's memory).
pub fn large_output(c: &Client, dir: &str, bytes: u64, mut sample: impl FnMut()) -> Result<()> {
    let file = format!("{dir}/large.bin");
    c.exec(&format!("head -c {bytes} /dev/urandom > {}", q(&file)))
        .timeout(BULK)
        .run()?
        .success()?;
    let want = remote_sha256(c, &file)?;
    let mut ssh = c
        .exec(&format!("cat {}", q(&file)))
        .stream_stdout()
        .timeout(BULK)
        .spawn()?;
    let mut stdout = ssh.take_stdout().context("stdout")?;
    let mut sum = Cmd::new("sha256sum").stdin_piped().timeout(BULK).spawn()?;
    let mut sum_in = sum.take_stdin().context("sha256sum stdin")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    let mut stalled = false;
    let mut next_sample = 0u64;
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum_in.write_all(&buf[..n])?;
        total += n as u64;
        if total >= next_sample {
            sample();
            next_sample += 8 << 20;
        }
        if !stalled && total >= 16 << 20 {
            // A slow reader: the server must stop reading the command's output rather
            // than buffer all of it.
            stalled = true;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                sample();
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(sum_in);
    let status = ssh.wait()?;
    ensure!(status.status.success(), "ssh failed:\n{status}");
    let got = first_word(&sum.wait()?.success()?.stdout_str())?;
    ensure!(total == bytes, "received {total} bytes, expected {bytes}");
    ensure!(got == want, "checksum differs: got {got}, sent {want}");
    Ok(())
}

/// A `bytes`-long random file up and down with scp; checksums match both ways.
pub fn scp_both_ways(c: &Client, dir: &str, bytes: u64) -> Result<()> {
    let local = c.dir().join("scp-up.bin");
    random_file(&local, bytes)?;
    let want = sha256sum(&local)?;
    let remote_up = format!("{dir}/scp-up.bin");
    c.scp(&[], &[&local.to_string_lossy(), &c.remote(&remote_up)])
        .timeout(BULK)
        .run()?
        .success()
        .context("scp upload")?;
    ensure!(
        remote_sha256(c, &remote_up)? == want,
        "uploaded file differs"
    );

    let remote_down = format!("{dir}/scp-down.bin");
    c.exec(&format!(
        "head -c {bytes} /dev/urandom > {}",
        q(&remote_down)
    ))
    .timeout(BULK)
    .run()?
    .success()?;
    let want = remote_sha256(c, &remote_down)?;
    let local_down = c.dir().join("scp-down.bin");
    c.scp(
        &[],
        &[&c.remote(&remote_down), &local_down.to_string_lossy()],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("scp download")?;
    ensure!(sha256sum(&local_down)? == want, "downloaded file differs");
    fs::remove_file(&local)?;
    fs::remove_file(&local_down)?;
    Ok(())
}

/// A `bytes`-long random file up and down with sftp; checksums match both ways.
pub fn sftp_both_ways(c: &Client, dir: &str, bytes: u64) -> Result<()> {
    let local = c.dir().join("sftp-up.bin");
    random_file(&local, bytes)?;
    let want_up = sha256sum(&local)?;
    let remote_down = format!("{dir}/sftp-down.bin");
    c.exec(&format!(
        "head -c {bytes} /dev/urandom > {}",
        q(&remote_down)
    ))
    .timeout(BULK)
    .run()?
    .success()?;
    let want_down = remote_sha256(c, &remote_down)?;
    let local_down = c.dir().join("sftp-down.bin");
    let remote_up = format!("{dir}/sftp-up.bin");
    let batch = format!(
        "put {} {}\nget {} {}\n",
        q(&local),
        q(&remote_up),
        q(&remote_down),
        q(&local_down)
    );
    c.sftp(&["-b", "-"])
        .stdin(batch)
        .timeout(BULK)
        .run()?
        .success()?;
    ensure!(
        remote_sha256(c, &remote_up)? == want_up,
        "sftp put: file differs"
    );
    ensure!(
        sha256sum(&local_down)? == want_down,
        "sftp get: file differs"
    );
    fs::remove_file(&local)?;
    fs::remove_file(&local_down)?;
    Ok(())
}

/// The everyday sftp commands in one batch: mkdir, put, rename, symlink, chmod, ls,
/// rmdir, rm, get through a symlink — and the filesystem shows each.
pub fn sftp_batch_ops(c: &Client, dir: &str) -> Result<()> {
    let local = c.dir().join("batch.txt");
    fs::write(&local, "batch contents\n")?;
    let fetched = c.dir().join("fetched.txt");
    let batch = format!(
        "cd {dir}\n\
         mkdir sub\n\
         put {local} sub/a.txt\n\
         rename sub/a.txt sub/b.txt\n\
         symlink b.txt sub/link\n\
         chmod 600 sub/b.txt\n\
         ls -l sub\n\
         mkdir gone\n\
         rmdir gone\n\
         put {local} sub/tmp.txt\n\
         rm sub/tmp.txt\n\
         get sub/link {fetched}\n\
         pwd\n",
        dir = q(dir),
        local = q(&local),
        fetched = q(&fetched),
    );
    let out = c.sftp(&["-b", "-"]).stdin(batch).run()?.success()?;
    let listing = out.stdout_str();
    let line = |name: &str| {
        listing
            .lines()
            .find(|l| !l.starts_with("sftp>") && l.trim_end().ends_with(name))
            .unwrap_or("")
    };
    ensure!(
        line("sub/b.txt").starts_with("-rw-------") && line("sub/link").starts_with('l'),
        "`ls -l sub` should list b.txt as -rw------- and link as a symlink:\n{out}"
    );
    ensure!(
        fs::read_to_string(&fetched)? == "batch contents\n",
        "get through the symlink fetched other contents"
    );
    let check = c
        .exec(&format!(
            "cd {} && ls -A sub && stat -c %a sub/b.txt && readlink sub/link && \
             test ! -e gone && echo gone-ok",
            q(dir)
        ))
        .run()?
        .success()?;
    ensure!(
        check.stdout_str() == "b.txt\nlink\n600\nb.txt\ngone-ok\n",
        "the server's filesystem does not show the batch's effects:\n{check}"
    );
    Ok(())
}

/// `scp -p` keeps mtime and mode, both ways.
pub fn scp_preserves_mtime_and_mode(c: &Client, dir: &str) -> Result<()> {
    let local = c.dir().join("keep.txt");
    fs::write(&local, "kept\n")?;
    fs::set_permissions(&local, fs::Permissions::from_mode(0o640))?;
    fs::File::options()
        .write(true)
        .open(&local)?
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000))?;
    let remote = format!("{dir}/keep.txt");
    c.scp(&["-p"], &[&local.to_string_lossy(), &c.remote(&remote)])
        .run()?
        .success()?;
    let out = c
        .exec(&format!("stat -c '%a %Y' {}", q(&remote)))
        .run()?
        .success()?;
    ensure!(
        out.stdout_trimmed() == "640 1000000000",
        "scp -p upload: expected mode 640 and mtime 1000000000:\n{out}"
    );

    let remote_src = format!("{dir}/from-server.txt");
    c.exec(&format!(
        "echo server > {f} && chmod 604 {f} && touch -d @1100000000 {f}",
        f = q(&remote_src)
    ))
    .run()?
    .success()?;
    let local_down = c.dir().join("from-server.txt");
    c.scp(
        &["-p"],
        &[&c.remote(&remote_src), &local_down.to_string_lossy()],
    )
    .run()?
    .success()?;
    let meta = fs::metadata(&local_down)?;
    ensure!(
        meta.mode() & 0o7777 == 0o604 && meta.mtime() == 1_100_000_000,
        "scp -p download: mode {:o} mtime {} (expected 604, 1100000000)",
        meta.mode() & 0o7777,
        meta.mtime()
    );
    Ok(())
}

/// `rsync -a -e ssh` up and back down: the tree arrives identical (content, modes,
/// mtimes, symlinks), and a second run transfers nothing.
pub fn rsync_both_ways(c: &Client, dir: &str) -> Result<()> {
    let src = c.dir().join("rsync-src");
    let back = c.dir().join("rsync-back");
    sample_tree(&src)?;
    let remote = format!("{dir}/rsync/");
    c.rsync(
        &["-a"],
        &[&format!("{}/", src.display()), &c.remote(&remote)],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("rsync upload")?;
    c.rsync(
        &["-a"],
        &[&c.remote(&remote), &format!("{}/", back.display())],
    )
    .timeout(BULK)
    .run()?
    .success()
    .context("rsync download")?;
    let (want, got) = (tree(&src)?, tree(&back)?);
    ensure!(
        want == got,
        "tree differs after rsync:\nsent: {want:#?}\ngot: {got:#?}"
    );
    let again = c
        .rsync(
            &["-a", "--itemize-changes"],
            &[&format!("{}/", src.display()), &c.remote(&remote)],
        )
        .timeout(BULK)
        .run()?
        .success()?;
    ensure!(
        again.stdout.is_empty(),
        "a second rsync should find nothing to do:\n{again}"
    );
    Ok(())
}
