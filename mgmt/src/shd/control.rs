//! The heal daemon's control socket: one JSON `ShdRequest` line in, one
//! JSON answer line out (`Ok` with this server's bricks, or `Err`). The
//! management daemon asks it (`ask_shd`) for `heal`, `heal full`,
//! `heal info` and `heal statistics`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::HealedVolume;
use crate::proto::{BrickHeal, HealOp, ShdRequest};

/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// Binds the socket (replacing a stale one).
pub(super) fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    Ok(UnixListener::bind(path)?)
}

/// Answers requests until aborted.
pub(super) async fn serve(listener: UnixListener, vols: Vec<Arc<HealedVolume>>) {
    let vols = Arc::new(vols);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let vols = vols.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(stream, &vols).await {
                tracing::debug!("control connection: {e}");
            }
        });
    }
}

async fn answer(stream: UnixStream, vols: &[Arc<HealedVolume>]) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let n = BufReader::new(r)
        .take(MAX_LINE as u64)
        .read_line(&mut line)
        .await?;
    if n == 0 {
        return Ok(());
    }
    let reply: Result<Vec<BrickHeal>, String> = match serde_json::from_str::<ShdRequest>(&line) {
        Ok(req) => handle(req, vols).await,
        Err(e) => Err(format!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await
}

async fn handle(req: ShdRequest, vols: &[Arc<HealedVolume>]) -> Result<Vec<BrickHeal>, String> {
    let Some(v) = vols.iter().find(|v| v.spec.name == req.volume) else {
        // This daemon heals no brick of that volume here.
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for c in &v.crawlers {
        let mut b = BrickHeal {
            index: c.index,
            brick: c.label.clone(),
            connected: c.set.child(c.child).is_some_and(|x| x.is_up()),
            entries: Vec::new(),
            crawls: Vec::new(),
            times: Vec::new(),
            count: 0,
        };
        match &req.op {
            HealOp::Index => c.kick(),
            HealOp::Full => c.kick_full(),
            HealOp::Statistics => b.crawls = c.records(),
            HealOp::HealCount => match c.pending().await {
                Ok(g) => b.count = g.len() as u64,
                Err(_) => b.connected = false,
            },
            HealOp::InfoHealed | HealOp::InfoHealFailed => {
                let events = c.events(req.op == HealOp::InfoHealFailed);
                let gfids: Vec<_> = events.iter().map(|(_, g)| *g).collect();
                b.times = events.iter().map(|(t, _)| *t).collect();
                let path = c.path.clone();
                b.entries =
                    tokio::task::spawn_blocking(move || super::paths::name_gfids(&path, &gfids))
                        .await
                        .map_err(|e| e.to_string())?;
            }
            HealOp::Info { split_brain } => {
                let gfids = match c.pending().await {
                    Ok(g) => g,
                    Err(e) => {
                        // The brick process is down: shown as not connected.
                        tracing::debug!(brick = %c.label, "heal info: {e}");
                        b.connected = false;
                        out.push(b);
                        continue;
                    }
                };
                let mut keep = Vec::new();
                for g in gfids {
                    if !*split_brain || c.set.examine(g).await.is_ok_and(|x| x.split_brain) {
                        keep.push(g);
                    }
                }
                let path = c.path.clone();
                b.entries =
                    tokio::task::spawn_blocking(move || super::paths::name_gfids(&path, &keep))
                        .await
                        .map_err(|e| e.to_string())?;
            }
            other => return Err(format!("the heal daemon does not run {other:?}")),
        }
        out.push(b);
    }
    Ok(out)
}

/// Sends `req` to the heal daemon listening on `socket`.
pub(crate) async fn ask_shd(
    socket: &Path,
    req: &ShdRequest,
    timeout: Duration,
) -> Result<Vec<BrickHeal>, String> {
    let work = async {
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|e| format!("the self-heal daemon is not running ({e})"))?;
        let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        line.push(b'\n');
        s.write_all(&line).await.map_err(|e| e.to_string())?;
        let mut answer = String::new();
        BufReader::new(s)
            .read_line(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        serde_json::from_str::<Result<Vec<BrickHeal>, String>>(&answer)
            .map_err(|e| format!("bad answer from the self-heal daemon: {e}"))?
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "the self-heal daemon did not answer in time".to_string())?
}
