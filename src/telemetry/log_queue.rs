//! The log queue: where a runtime worker leaves a log line, never waiting.
//!
//! `tracing`'s formatter writes each event as one `write_all` of the whole
//! line. The line is appended to a byte buffer under a short lock, or — when
//! the buffer already holds [`LOG_QUEUE_BYTES`] — dropped and counted. One
//! thread, `turnstile-log`, takes the whole buffer at a time and writes it
//! to the sink (stderr); only that thread ever blocks on the sink.
//!
//! The writer is woken only when the buffer goes from empty to non-empty,
//! and then lets lines gather for [`GATHER`] before it writes: under load a
//! worker pays a lock and a copy per line, not a thread wake-up (a wake-up
//! per line cost a single-node takeover ~15 µs at p50 on two cores with
//! `tracing-appender`'s channel). An idle node's writer sleeps.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log lines waiting for the writer thread at most (~3,000
/// typical lines: seconds of a burst, while the sink is merely slow).
pub const LOG_QUEUE_BYTES: usize = 1 << 20;
/// How long the writer lets lines gather after the first one arrives.
const GATHER: Duration = Duration::from_millis(5);
/// How long dropping the guard waits for what is queued to be written.
const FLUSH_ON_EXIT: Duration = Duration::from_secs(1);

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    dropped: AtomicU64,
    cap: usize,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `MakeWriter` handed to `tracing-subscriber`; cheap to clone.
#[derive(Clone)]
pub struct LogQueue {
    shared: Arc<Shared>,
}

/// Lines dropped so far because the queue was full.
#[derive(Clone)]
pub struct Dropped(Arc<Shared>);

impl Dropped {
    pub fn lines(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// Stops the writer thread when dropped, after it wrote what was queued
/// (bounded by [`FLUSH_ON_EXIT`], so a stuck sink cannot hold up the exit).
pub struct Flusher {
    shared: Arc<Shared>,
    exited: mpsc::Receiver<()>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        let _ = self.exited.recv_timeout(FLUSH_ON_EXIT);
    }
}

/// Starts the writer thread over `sink` with a queue of `cap` bytes.
pub fn start(
    sink: impl Write + Send + 'static,
    cap: usize,
) -> io::Result<(LogQueue, Dropped, Flusher)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        dropped: AtomicU64::new(0),
        cap,
    });
    let (done, exited) = mpsc::channel();
    let s = shared.clone();
    std::thread::Builder::new()
        .name("turnstile-log".into())
        .spawn(move || {
            write_out(&s, sink);
            let _ = done.send(());
        })?;
    Ok((
        LogQueue {
            shared: shared.clone(),
        },
        Dropped(shared.clone()),
        Flusher { shared, exited },
    ))
}

/// The writer thread: waits for lines, lets more gather, writes them all.
fn write_out(shared: &Shared, mut sink: impl Write) {
    let mut spare = Vec::new();
    loop {
        let closed = {
            let mut st = shared.lock();
            while st.buf.is_empty() && !st.closed {
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.closed
        };
        if !closed {
            std::thread::sleep(GATHER);
        }
        let closed = {
            let mut st = shared.lock();
            std::mem::swap(&mut st.buf, &mut spare);
            st.closed
        };
        // Blocking here is the point: only this thread waits on the sink.
        let _ = sink.write_all(&spare).and_then(|()| sink.flush());
        spare.clear();
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

/// One event's writer: its single `write_all` is the whole line.
pub struct LineWriter<'a>(&'a Shared);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut st = self.0.lock();
        if st.buf.len() + line.len() > self.0.cap {
            drop(st);
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let was_empty = st.buf.is_empty();
            st.buf.extend_from_slice(line);
            drop(st);
            if was_empty {
                self.0.wake.notify_one();
            }
        }
        // Taken (or dropped and counted) either way: the caller never waits.
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogQueue {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.shared)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that records what reached it, or blocks until released.
    #[derive(Clone)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn sink(open: bool) -> Sink {
        Sink {
            out: Arc::default(),
            gate: Arc::new((Mutex::new(open), Condvar::new())),
        }
    }

    #[test]
    fn lines_reach_the_sink_whole_and_in_order_and_are_flushed_on_drop() {
        let s = sink(true);
        let (q, dropped, flusher) = start(s.clone(), 1 << 20).expect("thread");
        for i in 0..1000 {
            q.make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(flusher);
        let out = String::from_utf8(s.out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!(lines[999], "line 999");
        assert_eq!(dropped.lines(), 0);
    }

    #[test]
    fn a_stuck_sink_costs_dropped_lines_never_a_wait() {
        let s = sink(false);
        let (q, dropped, flusher) = start(s.clone(), 1000).expect("thread");
        // 100 lines of 100 bytes into 1,000 bytes of queue (the writer may
        // hold one batch while it is stuck in the sink): most are dropped,
        // and every write returned at once (this test would hang otherwise).
        let line = [b'x'; 100];
        for _ in 0..100 {
            assert_eq!(q.make_writer().write(&line).unwrap(), 100);
        }
        assert!(dropped.lines() >= 80, "dropped {}", dropped.lines());
        // Releasing the sink lets the exit flush finish.
        {
            let (open, cv) = &*s.gate;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        drop(flusher);
        assert!(s.out.lock().unwrap().len() <= 2000);
    }
}
