//! What a repository's devcontainer.json needs of the Docker backend: a place on
//! the host to read the file from the repository, the image's own env and
//! accounts, and its lifecycle commands run in the sandbox as the session user. The
//! policy (which keys, in what order) is in [`crate::devsetup`].

use super::*;

/// Output kept of one lifecycle command (its tail).
const KEPT_OUTPUT: usize = 16 * 1024;
/// The largest `/etc/passwd` read from an image (with its tar header).
const MAX_PASSWD: usize = 256 * 1024;
/// The label of the short-lived, never-started container an image's accounts are
/// read from.
const LABEL_PEEK: &str = "org.warren.peek";

impl DockerBackend {
    /// A scratch place on the runner host, out of every sandbox's reach, for
    /// reading one file of `id`'s repository ([`git::read_file_at`]).
    pub fn devcontainer_place(&self, id: &SandboxId) -> git::PushPlace<'_> {
        git::PushPlace {
            scratch: self.run_dir.join(format!(".devcontainer-{id}")),
            agent_bin: &self.agent_bin,
        }
    }

    /// Where the runner keeps what `id`'s later starts need of its devcontainer
    /// (runner-owned, never mounted into the sandbox).
    pub fn devcontainer_state(&self, id: &SandboxId) -> PathBuf {
        self.run_dir.join(format!(".devcontainer-{id}.json"))
    }

    /// The `ENV` lines of the image `spec` would run (after its checks).
    pub async fn image_env(&self, spec: &SandboxSpec) -> crate::Result<BTreeMap<String, String>> {
        let info = self.image_info(spec).await?;
        Ok(info
            .config
            .and_then(|c| c.env)
            .unwrap_or_default()
            .iter()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// The image's `/etc/passwd`, copied out of a container made from it for the
    /// purpose and removed at once, never started (nothing of the image runs).
    /// Bounded; a link or anything but a plain file there is an error.
    pub async fn image_passwd(&self, id: &SandboxId, image: &str) -> crate::Result<String> {
        let name = format!("warren-peek-{id}");
        let config = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["/nonexistent".into()]),
            network_disabled: Some(true),
            labels: Some(HashMap::from([(
                LABEL_PEEK.to_owned(),
                self.runner.clone(),
            )])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        // One an interrupted read left behind would hold the name.
        let _ = self.remove_peek(&name).await;
        self.docker
            .create_container(Some(options), config)
            .await
            .with_context(|| format!("making {name} to read the image's accounts"))?;
        let read = async {
            let options = bollard::query_parameters::DownloadFromContainerOptions {
                path: "/etc/passwd".to_owned(),
            };
            let mut stream = self.docker.download_from_container(&name, Some(options));
            let mut tar = Vec::new();
            while let Some(chunk) = stream.next().await {
                tar.extend_from_slice(&chunk?);
                if tar.len() > MAX_PASSWD + 1024 {
                    bail!("the image's /etc/passwd is larger than {MAX_PASSWD} bytes");
                }
            }
            single_file(&tar)
        };
        let text = read.await;
        if let Err(e) = self.remove_peek(&name).await {
            tracing::warn!(container = %name, error = %e, "removing a container made to read an image's accounts");
        }
        Ok(text.context("reading the image's /etc/passwd")?)
    }

    async fn remove_peek(&self, name: &str) -> std::result::Result<(), bollard::errors::Error> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        self.docker.remove_container(name, Some(options)).await
    }

    /// The image a spec naming none runs.
    pub fn default_image(&self) -> &str {
        &self.defaults.image
    }

    /// Runs `argv` in the directory `cwd` as the session user with the
    /// container's env (what a session sees); returns the exit code and the tail
    /// of stdout and stderr as they came; `on_output` sees each piece as it comes.
    pub async fn run_in(
        &self,
        id: &SandboxId,
        argv: &[String],
        cwd: &str,
        on_output: &mut (dyn FnMut(&[u8]) + Send),
    ) -> Result<(i64, String)> {
        let user = self.session_user(id)?;
        let exec = self
            .docker
            .create_exec(
                &container_name(id),
                CreateExecOptions {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    user: Some(user),
                    cmd: Some(argv.to_vec()),
                    working_dir: Some(cwd.to_owned()),
                    ..Default::default()
                },
            )
            .await
            .context("docker exec")?;
        let mut output = Vec::new();
        if let StartExecResults::Attached {
            output: mut out, ..
        } = self.docker.start_exec(&exec.id, None).await?
        {
            while let Some(chunk) = out.next().await {
                match chunk? {
                    LogOutput::StdOut { message } | LogOutput::StdErr { message } => {
                        on_output(&message);
                        output.extend_from_slice(&message);
                        if output.len() > 2 * KEPT_OUTPUT {
                            output.drain(..output.len() - KEPT_OUTPUT);
                        }
                    }
                    _ => {}
                }
            }
        }
        let code = self.exit_code(&exec.id).await?;
        Ok((code, String::from_utf8_lossy(&output).into_owned()))
    }
}

/// The one plain file of a tar archive (the engine's answer for one path): its
/// text, lossily. A link, a directory or a truncated archive is an error.
fn single_file(tar: &[u8]) -> Result<String> {
    let header = tar.get(..512).context("an empty archive")?;
    // `0` or NUL: a regular file; anything else (a link above all) is refused.
    if !matches!(header[156], b'0' | 0) {
        bail!("not a plain file");
    }
    let size = std::str::from_utf8(&header[124..136])
        .ok()
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|s| usize::from_str_radix(s, 8).ok())
        .context("a tar header without a size")?;
    let body = tar.get(512..512 + size).context("a truncated archive")?;
    Ok(String::from_utf8_lossy(body).into_owned())
}

/// An account of an image, from its passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The account named `user`, or of uid `user` when it is a number (`1000`), in
/// the text of a passwd file.
pub fn find_account(passwd: &str, user: &str) -> Option<Account> {
    let by_uid: Option<u32> = user.parse().ok();
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid: u32 = fields.next()?.parse().ok()?;
        let gid: u32 = fields.next()?.parse().ok()?;
        let matches = if by_uid.is_some() {
            by_uid == Some(uid)
        } else {
            name == user
        };
        (matches && !name.is_empty() && !name.starts_with('#')).then(|| Account {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accounts_by_name_or_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\ntoor:x:0:0::/:/bin/sh\n\
                      dev:x:1001:1001::/home/dev:/bin/bash\nbroken:x:a:b\n";
        assert_eq!(find_account(passwd, "dev").unwrap().uid, 1001);
        assert_eq!(find_account(passwd, "1001").unwrap().name, "dev");
        assert_eq!(find_account(passwd, "toor").unwrap().uid, 0);
        assert!(find_account(passwd, "broken").is_none());
        assert!(find_account(passwd, "nobody").is_none());
    }

    #[test]
    fn one_file_from_an_archive() {
        let mut tar = vec![0u8; 1024];
        tar[..6].copy_from_slice(b"passwd");
        tar[124..135].copy_from_slice(b"00000000005");
        tar[156] = b'0';
        tar[512..517].copy_from_slice(b"a:b:c");
        assert_eq!(single_file(&tar).unwrap(), "a:b:c");
        tar[156] = b'2';
        assert!(single_file(&tar).is_err());
        tar[156] = b'0';
        tar[124..135].copy_from_slice(b"00000077777");
        assert!(single_file(&tar).is_err());
        assert!(single_file(&[]).is_err());
    }
}
