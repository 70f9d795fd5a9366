//! An open-loop HTTP/1.1 load generator for the paced runs of `bench/proxy.sh`
//! (`PACER=even`): requests at a constant rate on keep-alive connections, evenly spaced,
//! and the latency of each counted from its scheduled time.
//!
//! Why not wrk: its timers count whole milliseconds, so a paced wrk sends whatever falls
//! due within a millisecond at once. Captured at the upstream at 30k req/s, 62% of 100 µs
//! windows saw no request and the median gap between arrivals was 7 µs against a mean of
//! 33: a p99 measured that way is largely the time to drain a burst. Here each thread
//! wakes on a `timerfd` (high-resolution, absolute) every `-q` microseconds (default 100)
//! and sends the requests that fell due since its last wake-up: at 30k req/s, 4% of 100 µs
//! windows empty, a median gap of 24 µs. `-q 0` wakes once per request, which costs this
//! generator about 1.6 times the CPU per request (35 against 22 µs at 26k req/s, measured
//! on one machine; wrk's bursts cost it 14).
//!
//! Counting from the scheduled time (as wrk2 does) means a request that had to wait for a
//! free connection, or for this generator to get a core, is charged that wait: queueing
//! cannot hide behind a slow response (coordinated omission). The service time, from the
//! write to the last byte of the response, is reported beside it.
//!
//! `bench_load URL RATE SECONDS [-c CONNECTIONS] [-t THREADS] [-q MICROS] [-H "Name: value"]...`
//!
//! Prints one line in the format of `bench/wrk-report.lua` (`WRK_RESULT rps=… p50_us=…
//! p99_us=… requests=… non2xx=… socket_errors=…`) and one `LOAD_DETAIL` line (service-time
//! percentiles, requests that found no free connection at their slot, the target rate).
//! Linux only (epoll, timerfd).

#[cfg(target_os = "linux")]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match linux::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_load: {e}");
            eprintln!(
                "usage: bench_load URL RATE SECONDS [-c CONNECTIONS] [-t THREADS] [-q MICROS] [-H \"Name: value\"]..."
            );
            std::process::exit(2);
        }
    };
    if let Err(e) = linux::run(&opts) {
        eprintln!("bench_load: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("bench_load: needs Linux (epoll, timerfd)");
    std::process::exit(1);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::VecDeque;
    use std::io::{self, Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::time::Duration;

    pub struct Options {
        addr: String,
        host: String,
        path: String,
        rate: f64,
        seconds: f64,
        connections: usize,
        threads: usize,
        headers: Vec<String>,
        /// Wake-ups are this far apart at the least: each one sends the requests that fell
        /// due since the last (0: one wake-up per request).
        quantum_ns: u64,
    }

    impl Options {
        pub fn parse(args: &[String]) -> Result<Options, String> {
            let mut positional = Vec::new();
            let mut connections = 64;
            let mut threads = 2;
            let mut quantum_us = 100;
            let mut headers = Vec::new();
            let mut it = args.iter();
            while let Some(a) = it.next() {
                let mut value = |flag: &str| {
                    it.next()
                        .cloned()
                        .ok_or_else(|| format!("{flag} needs a value"))
                };
                match a.as_str() {
                    "-c" => connections = number(&value("-c")?, "-c")?,
                    "-t" => threads = number(&value("-t")?, "-t")?,
                    "-q" => quantum_us = number(&value("-q")?, "-q")?,
                    "-H" => {
                        let h = value("-H")?;
                        if !h.contains(':') || h.contains('\r') || h.contains('\n') {
                            return Err(format!("-H {h:?}: expected \"Name: value\""));
                        }
                        headers.push(h);
                    }
                    _ => positional.push(a.clone()),
                }
            }
            let [url, rate, seconds] = positional.as_slice() else {
                return Err("expected URL RATE SECONDS".into());
            };
            let rest = url
                .strip_prefix("http://")
                .ok_or_else(|| format!("{url}: only http:// URLs"))?;
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            let addr = if authority.contains(':') {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            };
            let rate: f64 = rate
                .parse()
                .ok()
                .filter(|r: &f64| r.is_finite() && *r > 0.0)
                .ok_or_else(|| format!("RATE {rate:?}: expected requests per second above 0"))?;
            let seconds: f64 = seconds
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s > 0.0)
                .ok_or_else(|| format!("SECONDS {seconds:?}: expected a duration above 0"))?;
            if threads == 0 || connections < threads {
                return Err("need at least one thread and one connection per thread".into());
            }
            Ok(Options {
                addr,
                host: authority.to_owned(),
                path: path.to_owned(),
                rate,
                seconds,
                connections,
                threads,
                headers,
                quantum_ns: quantum_us as u64 * 1000,
            })
        }

        fn request(&self) -> Vec<u8> {
            let mut r = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", self.path, self.host);
            for h in &self.headers {
                r.push_str(h);
                r.push_str("\r\n");
            }
            r.push_str("\r\n");
            r.into_bytes()
        }
    }

    fn number(s: &str, flag: &str) -> Result<usize, String> {
        s.parse()
            .map_err(|_| format!("{flag} {s:?}: expected a whole number"))
    }

    /// What one thread measured.
    #[derive(Default)]
    struct Tally {
        /// Microseconds from each request's scheduled time to its complete response.
        latency: Vec<u32>,
        /// Microseconds from writing each request to its complete response.
        service: Vec<u32>,
        non2xx: u64,
        socket_errors: u64,
        /// Requests whose slot came with every connection busy.
        queued: u64,
    }

    pub fn run(o: &Options) -> Result<(), String> {
        let addr = o
            .addr
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", o.addr))?
            .next()
            .ok_or_else(|| format!("{}: no address", o.addr))?;
        let request = o.request();
        let interval_ns = (o.threads as f64 * 1e9 / o.rate) as u64;
        if interval_ns == 0 {
            return Err("RATE is too high for the number of threads".into());
        }
        let start = now_ns() + 50_000_000;
        let end = start + (o.seconds * 1e9) as u64;
        let tallies = std::thread::scope(|s| {
            let handles: Vec<_> = (0..o.threads)
                .map(|i| {
                    let conns =
                        o.connections / o.threads + usize::from(i < o.connections % o.threads);
                    let request = &request;
                    // The threads' schedules interleave: thread i starts i/threads of an
                    // interval late, so together they send evenly spaced requests.
                    let schedule = Schedule {
                        origin: start,
                        first: start + interval_ns * i as u64 / o.threads as u64,
                        interval: interval_ns,
                        quantum: o.quantum_ns.max(1),
                        end,
                    };
                    s.spawn(move || {
                        Worker::new(addr, conns, request, &schedule).and_then(Worker::run)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a load thread panicked".into()))
                })
                .collect::<Result<Vec<Tally>, String>>()
        })?;
        let mut all = Tally::default();
        for t in tallies {
            all.latency.extend(t.latency);
            all.service.extend(t.service);
            all.non2xx += t.non2xx;
            all.socket_errors += t.socket_errors;
            all.queued += t.queued;
        }
        let n = all.latency.len();
        if n == 0 {
            return Err("no request completed".into());
        }
        all.latency.sort_unstable();
        all.service.sort_unstable();
        let rps = n as f64 / o.seconds;
        println!(
            "WRK_RESULT rps={rps:.1} p50_us={} p99_us={} requests={n} non2xx={} socket_errors={}",
            percentile(&all.latency, 0.50),
            percentile(&all.latency, 0.99),
            all.non2xx,
            all.socket_errors
        );
        println!(
            "LOAD_DETAIL target_rps={:.1} service_p50_us={} service_p99_us={} latency_p999_us={} queued_for_a_connection={}",
            o.rate,
            percentile(&all.service, 0.50),
            percentile(&all.service, 0.99),
            percentile(&all.latency, 0.999),
            all.queued
        );
        Ok(())
    }

    /// The smallest value with at least `q` of the (sorted) values at or below it.
    fn percentile(sorted: &[u32], q: f64) -> u32 {
        let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec the call writes into.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    fn os_error(what: &str) -> String {
        format!("{what}: {}", io::Error::last_os_error())
    }

    /// When one thread sends: at `first`, then every `interval`, until `end`; it wakes at
    /// multiples of `quantum` after `origin` only.
    struct Schedule {
        origin: u64,
        first: u64,
        interval: u64,
        quantum: u64,
        end: u64,
    }

    impl Schedule {
        /// The first wake-up at or after `due`.
        fn wake_at(&self, due: u64) -> u64 {
            let steps = (due.saturating_sub(self.origin)).div_ceil(self.quantum);
            self.origin + steps * self.quantum
        }
    }

    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
        /// (scheduled, written) times of the request in flight.
        in_flight: Option<(u64, u64)>,
    }

    struct Worker<'a> {
        addr: std::net::SocketAddr,
        epoll: OwnedFd,
        timer: OwnedFd,
        conns: Vec<Conn>,
        idle: Vec<usize>,
        /// Scheduled times of requests whose slot came with no connection free.
        waiting: VecDeque<u64>,
        request: &'a [u8],
        next: u64,
        /// The time the timer is set to (0: not set).
        armed: u64,
        schedule: &'a Schedule,
        tally: Tally,
    }

    /// The epoll token of the timer; sockets use their connection's index.
    const TIMER: u64 = u64::MAX;

    impl<'a> Worker<'a> {
        fn new(
            addr: std::net::SocketAddr,
            conns: usize,
            request: &'a [u8],
            schedule: &'a Schedule,
        ) -> Result<Worker<'a>, String> {
            // Timer expiries are exact: no slack added to this thread's timers.
            // SAFETY: prctl with PR_SET_TIMERSLACK takes a plain integer argument.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
            // SAFETY: plain system calls returning a new descriptor or -1.
            let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if epoll < 0 {
                return Err(os_error("epoll_create1"));
            }
            // SAFETY: `epoll` is a descriptor just created and owned by nothing else.
            let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
            // SAFETY: as above.
            let timer = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            if timer < 0 {
                return Err(os_error("timerfd_create"));
            }
            // SAFETY: `timer` is a descriptor just created and owned by nothing else.
            let timer = unsafe { OwnedFd::from_raw_fd(timer) };
            let mut w = Worker {
                addr,
                epoll,
                timer,
                conns: Vec::with_capacity(conns),
                idle: Vec::with_capacity(conns),
                waiting: VecDeque::new(),
                request,
                next: schedule.first,
                armed: 0,
                schedule,
                tally: Tally::default(),
            };
            w.watch(w.timer.as_raw_fd(), TIMER)?;
            for i in 0..conns {
                let stream = w.connect()?;
                w.watch(stream.as_raw_fd(), i as u64)?;
                w.conns.push(Conn {
                    stream,
                    buf: Vec::with_capacity(4096),
                    in_flight: None,
                });
                w.idle.push(i);
            }
            Ok(w)
        }

        fn connect(&self) -> Result<TcpStream, String> {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {}: {e}", self.addr))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_nonblocking(true).map_err(|e| e.to_string())?;
            Ok(s)
        }

        fn watch(&self, fd: RawFd, token: u64) -> Result<(), String> {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: both descriptors are open; `ev` is valid for the call.
            let rc = unsafe {
                libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev)
            };
            if rc < 0 {
                return Err(os_error("epoll_ctl"));
            }
            Ok(())
        }

        fn arm(&self, at_ns: u64) -> Result<(), String> {
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                    tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
                },
            };
            // SAFETY: the timer descriptor is open; `spec` is valid for the call and no
            // old value is asked for.
            let rc = unsafe {
                libc::timerfd_settime(
                    self.timer.as_raw_fd(),
                    libc::TFD_TIMER_ABSTIME,
                    &spec,
                    std::ptr::null_mut(),
                )
            };
            if rc < 0 {
                return Err(os_error("timerfd_settime"));
            }
            Ok(())
        }

        fn run(mut self) -> Result<Tally, String> {
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 128];
            loop {
                let now = now_ns();
                let end = self.schedule.end;
                if now >= end {
                    return Ok(self.tally);
                }
                while self.next <= now && self.next < end {
                    let slot = self.next;
                    self.next += self.schedule.interval;
                    match self.idle.pop() {
                        Some(i) => self.send(i, slot, now)?,
                        None => {
                            self.tally.queued += 1;
                            self.waiting.push_back(slot);
                        }
                    }
                }
                // Re-armed only when the wake-up moves: a response arriving in between
                // leaves it where it was.
                let wake = self.schedule.wake_at(self.next.min(end));
                if wake != self.armed {
                    self.arm(wake)?;
                    self.armed = wake;
                }
                // SAFETY: `events` has room for its length in entries; -1 waits for the
                // timer or a socket.
                let n = unsafe {
                    libc::epoll_wait(
                        self.epoll.as_raw_fd(),
                        events.as_mut_ptr(),
                        events.len() as libc::c_int,
                        -1,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(format!("epoll_wait: {e}"));
                }
                let now = now_ns();
                for ev in &events[..n as usize] {
                    let token = ev.u64;
                    if token == TIMER {
                        let mut expirations = [0u8; 8];
                        // The count itself is not needed; reading clears the readiness.
                        // SAFETY: the buffer has 8 bytes, as a timerfd read needs.
                        unsafe {
                            libc::read(self.timer.as_raw_fd(), expirations.as_mut_ptr().cast(), 8)
                        };
                    } else {
                        self.receive(token as usize, now)?;
                    }
                }
            }
        }

        fn send(&mut self, i: usize, slot: u64, now: u64) -> Result<(), String> {
            let c = &mut self.conns[i];
            c.in_flight = Some((slot, now));
            match c.stream.write(self.request) {
                Ok(n) if n == self.request.len() => Ok(()),
                // A fresh keep-alive connection's send buffer is empty: a short write means
                // something is badly wrong with the peer.
                Ok(n) => Err(format!("short write: {n} of {} bytes", self.request.len())),
                Err(e) => {
                    self.tally.socket_errors += 1;
                    self.reconnect(i).map_err(|r| format!("{e}; {r}"))?;
                    self.send_again(i, slot)
                }
            }
        }

        /// Sends a request that failed on a dead connection once more, on a new one.
        fn send_again(&mut self, i: usize, slot: u64) -> Result<(), String> {
            let now = now_ns();
            let c = &mut self.conns[i];
            c.in_flight = Some((slot, now));
            c.stream
                .write_all(self.request)
                .map_err(|e| format!("write after reconnecting: {e}"))
        }

        fn reconnect(&mut self, i: usize) -> Result<(), String> {
            let stream = self.connect()?;
            self.watch(stream.as_raw_fd(), i as u64)?;
            let c = &mut self.conns[i];
            // Dropping the old stream closes it, which also removes it from the epoll set.
            c.stream = stream;
            c.buf.clear();
            Ok(())
        }

        fn receive(&mut self, i: usize, now: u64) -> Result<(), String> {
            let mut chunk = [0u8; 8192];
            let mut closed = false;
            loop {
                match self.conns[i].stream.read(&mut chunk) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => self.conns[i].buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            let c = &mut self.conns[i];
            match parse_response(&c.buf)? {
                Some(Response { status, len, close }) => {
                    c.buf.drain(..len);
                    if let Some((slot, written)) = c.in_flight.take() {
                        let micros = |from: u64| (now.saturating_sub(from) / 1000) as u32;
                        self.tally.latency.push(micros(slot));
                        self.tally.service.push(micros(written));
                        if !(200..400).contains(&status) {
                            self.tally.non2xx += 1;
                        }
                    }
                    if !c.buf.is_empty() {
                        return Err(format!(
                            "the server sent bytes nobody asked for: {:?}",
                            String::from_utf8_lossy(&c.buf[..c.buf.len().min(300)])
                        ));
                    }
                    // A server that announced the close (nginx does after 1000 requests on
                    // one connection) gets a new connection before the next request, as a
                    // client would, instead of a request sent into the closing one.
                    if closed || close {
                        self.reconnect(i)?;
                    }
                    match self.waiting.pop_front() {
                        Some(slot) => self.send(i, slot, now_ns())?,
                        None => self.idle.push(i),
                    }
                }
                None if closed => {
                    self.tally.socket_errors += 1;
                    let slot = c.in_flight.take().map(|(slot, _)| slot);
                    self.reconnect(i)?;
                    // A connection with nothing in flight is already in the idle list
                    // (the server closed it between requests); the new one takes its place.
                    if let Some(slot) = slot {
                        self.send_again(i, slot)?;
                    }
                }
                None => {}
            }
            Ok(())
        }
    }

    struct Response {
        status: u16,
        /// Head and body, in bytes.
        len: usize,
        /// `Connection: close`: the server closes the connection after this response.
        close: bool,
    }

    /// A complete response at the start of `buf`. Only `Content-Length` bodies: what the
    /// upstream of `bench/proxy.sh` sends and each proxy passes on.
    fn parse_response(buf: &[u8]) -> Result<Option<Response>, String> {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&buf[..head_end])
            .map_err(|_| "response head is not UTF-8".to_string())?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut length = None;
        let mut close = false;
        for line in lines {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not supported".into());
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.trim().eq_ignore_ascii_case("close");
            }
        }
        let length = length.ok_or("response without Content-Length")?;
        let total = head_end + 4 + length;
        Ok((buf.len() >= total).then_some(Response {
            status,
            len: total,
            close,
        }))
    }
}
