//! The end-to-end upload with the real `sealdrop-client`, and the
//! references it is compared with in the same run: `scp` to a private
//! sshd on 127.0.0.1, and `openssl speed` for AES-128-CBC.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use sealdrop_protocol::cksum::Cksum;
use sealdrop_testkit::data::random_bytes;

use crate::procs::{self, last_line, on_path, Cpu, Guard, Res, Server, SysCpu};

/// Longest one upload of the big file may take (client or scp).
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest sshd may take to listen, and the scp smoke test to finish.
const SSHD_TIMEOUT: Duration = Duration::from_secs(30);

/// The file uploaded: generated once, in the page cache.
pub struct BigFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its POSIX cksum.
    pub cksum: u32,
}

/// Writes a `size`-byte file of pseudo-random bytes into `dir`, then reads
/// it once so every upload finds it in the page cache.
pub fn make_file(dir: &Path, size: u64) -> Res<BigFile> {
    let path = dir.join("big.bin");
    let blocks: Vec<Vec<u8>> = (0..16).map(|i| random_bytes(100 + i, 1 << 20)).collect();
    let mut f = File::create(&path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut ck = Cksum::new();
    let mut left = size;
    let mut i = 0;
    while left > 0 {
        let b = &blocks[i % blocks.len()][..(1u64 << 20).min(left) as usize];
        f.write_all(b)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        ck.update(b);
        left -= b.len() as u64;
        i += 1;
    }
    drop(f);
    let mut buf = vec![0u8; 1 << 20];
    let mut r = File::open(&path).map_err(|e| e.to_string())?;
    while r.read(&mut buf).map_err(|e| e.to_string())? > 0 {}
    Ok(BigFile {
        path,
        size,
        cksum: ck.finish(),
    })
}

/// One timed run of an upload program.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// Wall time of the process.
    pub wall: Duration,
    /// CPU of the process (user + system), from our reaped-children times.
    pub cpu: f64,
    /// CPU of the server (user, system) during the run.
    pub server_user: f64,
    /// See `server_user`.
    pub server_sys: f64,
    /// Machine-wide CPU time during the run.
    pub machine: SysCpu,
}

impl Run {
    /// Throughput in MB/s (10^6 bytes) for `bytes`.
    pub fn mb_per_s(&self, bytes: u64) -> f64 {
        bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

/// The real client, with its state dir (registered by a warm-up run).
pub struct RealClient {
    bin: PathBuf,
    state: PathBuf,
    name: String,
    /// `--revision` given to the client (PROTOCOL.md §9); None: its default, 2023c.
    revision: Option<&'static str>,
}

impl RealClient {
    /// Registers with a small warm-up upload, so timed runs reconnect as
    /// a returning client would (RSA key generation is not timed).
    pub fn prepare(bin: &Path, dir: &Path, server: &Server) -> Res<RealClient> {
        Self::prepare_revision(bin, dir, server, None)
    }

    /// As [`RealClient::prepare`], speaking `revision` (the server detects it).
    pub fn prepare_revision(
        bin: &Path,
        dir: &Path,
        server: &Server,
        revision: Option<&'static str>,
    ) -> Res<RealClient> {
        let tag = revision.unwrap_or("default");
        let state = dir.join(format!("client-state-{tag}"));
        fs::create_dir_all(&state).map_err(|e| e.to_string())?;
        let warm = dir.join("warm.txt");
        fs::write(&warm, b"warm-up\n").map_err(|e| e.to_string())?;
        let c = RealClient {
            bin: bin.to_owned(),
            state,
            name: format!("bench-e2e-{tag}"),
            revision,
        };
        c.upload(server.addr, &warm, None)?;
        Ok(c)
    }

    fn command(&self, addr: SocketAddr, file: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--server")
            .arg(addr.to_string())
            .args(["--name", &self.name, "--file"])
            .arg(file)
            .arg("--state-dir")
            .arg(&self.state)
            .args(["--quiet", "--json", "--timeout", "300"]);
        if let Some(rev) = self.revision {
            cmd.args(["--revision", rev]);
        }
        cmd
    }

    /// Uploads `file`; checks exit 0, outcome verified and, if given, the cksum.
    pub fn upload(
        &self,
        addr: SocketAddr,
        file: &Path,
        want_cksum: Option<u32>,
    ) -> Res<(Duration, String)> {
        let out = procs::run(
            &mut self.command(addr, file),
            "sealdrop-client",
            UPLOAD_TIMEOUT,
        )?;
        let json = out.stdout.trim().to_owned();
        if !out.status.success() || json_str(&json, "outcome").as_deref() != Some("verified") {
            return Err(format!(
                "sealdrop-client failed ({}): {} {}",
                out.status,
                json,
                last_line(&out.stderr)
            ));
        }
        if let Some(want) = want_cksum {
            let got = json_num(&json, "cksum");
            if got != Some(u64::from(want)) {
                return Err(format!("client reported cksum {got:?}, file has {want}"));
            }
        }
        Ok((out.wall, json))
    }

    /// The command line of a run, for `perf`.
    pub fn argv(&self, addr: SocketAddr, file: &Path) -> Vec<String> {
        let cmd = self.command(addr, file);
        std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }
}

/// Times one real-client upload of `file`, with CPU accounting.
pub fn timed_client(client: &RealClient, server: &Server, file: &BigFile) -> Res<(Run, String)> {
    let (me0, srv0, sys0) = (Cpu::me(), server.cpu(), SysCpu::now());
    let (wall, json) = client.upload(server.addr, &file.path, Some(file.cksum))?;
    let (me, srv) = (Cpu::me().since(me0), server.cpu().since(srv0));
    let machine = SysCpu::now().since(sys0);
    Ok((
        Run {
            wall,
            cpu: me.child_user + me.child_sys,
            server_user: srv.user,
            server_sys: srv.sys,
            machine,
        },
        json,
    ))
}

/// Checks the server stored the file byte for byte (size and cksum).
pub fn check_stored(server: &Server, json: &str, file: &BigFile) -> Res<()> {
    let id = json_str(json, "client_id").ok_or("client printed no client_id")?;
    let stored = server
        .data
        .join("files")
        .join(id.to_lowercase())
        .join("big.bin");
    let mut f =
        File::open(&stored).map_err(|e| format!("stored file {}: {e}", stored.display()))?;
    let mut ck = Cksum::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        ck.update(&buf[..n]);
    }
    if ck.len() != file.size || ck.finish() != file.cksum {
        return Err(format!(
            "stored file {} differs from the original",
            stored.display()
        ));
    }
    Ok(())
}

/// The value of `"key":"text"` in the client's one-line JSON.
pub fn json_str(json: &str, key: &str) -> Option<String> {
    let rest = &json[json.find(&format!("\"{key}\":\""))? + key.len() + 4..];
    Some(rest[..rest.find('"')?].to_owned())
}

/// The value of `"key":123` in the client's one-line JSON.
pub fn json_num(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{key}\":"))? + key.len() + 3..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------
// scp to a private sshd
// ---------------------------------------------------------------------------

/// A private sshd on 127.0.0.1 with generated host and user keys.
pub struct Sshd {
    _guard: Guard,
    port: u16,
    dir: PathBuf,
    user: String,
    /// Notes for the report (e.g. a directory created for sshd).
    pub notes: Vec<String>,
}

impl Sshd {
    /// Starts sshd in `dir`, or says why it cannot.
    pub fn start(dir: &Path) -> Res<Sshd> {
        let sshd = on_path("sshd").ok_or("no sshd; apt-get install openssh-server")?;
        on_path("scp").ok_or("no scp; apt-get install openssh-client")?;
        let mut notes = Vec::new();
        let user = whoami();
        if user == "root" && !Path::new("/run/sshd").exists() {
            // sshd refuses to start as root without its privilege separation
            // directory, which its service unit would create.
            fs::create_dir_all("/run/sshd").map_err(|e| format!("cannot create /run/sshd: {e}"))?;
            notes.push("created /run/sshd (sshd's privilege separation directory)".into());
        }
        for key in ["host_key", "user_key"] {
            let out = procs::run(
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(dir.join(key)),
                "ssh-keygen",
                SSHD_TIMEOUT,
            )?;
            if !out.status.success() {
                return Err(format!("ssh-keygen failed: {}", last_line(&out.stderr)));
            }
        }
        fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
            .map_err(|e| e.to_string())?;
        let port = free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile none\n\
             AuthorizedKeysFile {d}/authorized_keys\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             StrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n\
             LogLevel ERROR\n",
            d = dir.display()
        );
        fs::write(dir.join("sshd_config"), config).map_err(|e| e.to_string())?;
        let log = File::create(dir.join("sshd.log")).map_err(|e| e.to_string())?;
        let guard = Guard::spawn(
            Command::new(&sshd)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
            "sshd",
        )?;
        let s = Sshd {
            _guard: guard,
            port,
            dir: dir.to_owned(),
            user,
            notes,
        };
        s.wait_listening()?;
        let probe = dir.join("probe.txt");
        fs::write(&probe, b"probe\n").map_err(|e| e.to_string())?;
        s.copy(&probe, None)
            .map_err(|e| format!("scp smoke test failed: {e}"))?;
        Ok(s)
    }

    fn wait_listening(&self) -> Res<()> {
        let deadline = Instant::now() + SSHD_TIMEOUT;
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
                return Err(format!("sshd did not listen: {}", last_line(&log)));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Copies `file` with scp, `cipher` or the default; returns the wall time.
    pub fn copy(&self, file: &Path, cipher: Option<&str>) -> Res<Duration> {
        let dest = self.dir.join("dest");
        fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
        let mut cmd = Command::new("scp");
        cmd.args(["-q", "-F", "/dev/null", "-P", &self.port.to_string(), "-i"])
            .arg(self.dir.join("user_key"))
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no"])
            .args([
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "LogLevel=ERROR"]);
        if let Some(c) = cipher {
            cmd.args(["-o", &format!("Ciphers={c}")]);
        }
        cmd.arg(file)
            .arg(format!("{}@127.0.0.1:{}/", self.user, dest.display()));
        let out = procs::run(&mut cmd, "scp", UPLOAD_TIMEOUT);
        let _ = fs::remove_dir_all(&dest);
        let out = out?;
        if !out.status.success() {
            return Err(format!(
                "scp failed ({}): {}",
                out.status,
                last_line(&out.stderr)
            ));
        }
        Ok(out.wall)
    }
}

/// The first cipher of ssh's default list: what a default scp negotiates
/// with a default sshd.
pub fn default_cipher() -> String {
    Command::new("ssh")
        .args(["-F", "/dev/null", "-G", "127.0.0.1"])
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let line = text.lines().find(|l| l.starts_with("ciphers "))?.to_owned();
            Some(line[8..].split(',').next()?.to_owned())
        })
        .unwrap_or_else(|| "default".into())
}

fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_else(|_| "root".into())
        })
}

fn free_port() -> Res<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

// ---------------------------------------------------------------------------
// openssl speed
// ---------------------------------------------------------------------------

/// `openssl speed -evp aes-128-cbc -bytes 16384 -seconds 3`: encryption
/// rate in bytes per second (the last figure, in k = 1000 bytes).
pub fn openssl_speed() -> Res<f64> {
    on_path("openssl").ok_or("no openssl")?;
    let out = procs::run(
        Command::new("openssl").args([
            "speed",
            "-evp",
            "aes-128-cbc",
            "-bytes",
            "16384",
            "-seconds",
            "3",
        ]),
        "openssl speed",
        Duration::from_secs(60),
    )?;
    parse_openssl(&out.stdout).ok_or_else(|| {
        format!(
            "cannot parse openssl speed output: {}",
            last_line(&out.stdout)
        )
    })
}

fn parse_openssl(stdout: &str) -> Option<f64> {
    let last = last_line(stdout).split_whitespace().last()?;
    let k: f64 = last.strip_suffix('k')?.parse().ok()?;
    Some(k * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openssl_speed() {
        let out = "version: 3.0.19\nThe 'numbers' are in 1000s of bytes per second processed.\n\
                   type          16384 bytes\nAES-128-CBC    1234567.89k\n";
        assert_eq!(parse_openssl(out), Some(1_234_567_890.0));
    }

    #[test]
    fn reads_client_json() {
        let j = r#"{"file":"big.bin","bytes":1073741824,"cksum":123,"attempts":1,"seconds":2.5,"client_id":"ab12","outcome":"verified"}"#;
        assert_eq!(json_str(j, "outcome").as_deref(), Some("verified"));
        assert_eq!(json_str(j, "client_id").as_deref(), Some("ab12"));
        assert_eq!(json_num(j, "cksum"), Some(123));
        assert_eq!(json_num(j, "bytes"), Some(1_073_741_824));
    }
}
