//! End-to-end tests: each mounts a fresh forgetful filesystem in a tempdir and
//! drives it through the kernel with ordinary file APIs.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use forgetful::{Forgetful, Op, Options, Tear};

type Res = Result<(), Box<dyn std::error::Error>>;

struct Env {
    fs: Forgetful,
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

fn setup_with(options: Options) -> io::Result<Env> {
    let dir = tempfile::tempdir()?;
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt)?;
    let fs = Forgetful::mount(&mnt, &dir.path().join("backing"), options)?;
    let mnt = fs.mountpoint().to_owned();
    Ok(Env { fs, mnt, _dir: dir })
}

fn setup() -> io::Result<Env> {
    setup_with(Options::default())
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// Write `data` to a new file and fsync it (not its directory).
fn write_synced(p: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

fn errno(r: io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

fn statvfs(p: &Path) -> io::Result<libc::statvfs> {
    let c = CString::new(p.as_os_str().as_bytes())?;
    // SAFETY: zeroed statvfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

#[test]
fn write_without_fsync_is_lost() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"")?;
    fsync_dir(&e.mnt)?;
    fs::write(e.p("f"), b"hello")?;
    fs::write(e.p("g"), b"never synced")?;
    assert!(e.fs.stats().unsynced_bytes > 0);
    let report = e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("f"))?, b"");
    assert!(!e.p("g").exists());
    assert!(report.files_lost >= 1);
    assert_eq!(e.fs.stats().unsynced_bytes, 0);
    assert_eq!(e.fs.stats().cuts, 1);
    Ok(())
}

#[test]
fn fsync_keeps_data_and_dir_fsync_keeps_name() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"durable")?;
    fsync_dir(&e.mnt)?;
    let s = e.fs.stats();
    assert_eq!((s.fsyncs, s.fsyncdirs, s.bytes_written), (1, 1, 7));
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("f"))?, b"durable");
    // A second cut with nothing new changes nothing.
    let r = e.fs.power_cut(Tear::None)?;
    assert_eq!((r.files_lost, r.names_reverted), (0, 0));
    assert_eq!(fs::read(e.p("f"))?, b"durable");
    Ok(())
}

#[test]
fn named_but_never_fsynced_file_comes_back_empty() -> Res {
    let mut e = setup()?;
    fs::write(e.p("f"), b"data")?;
    fsync_dir(&e.mnt)?;
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("f"))?, b"");
    Ok(())
}

#[test]
fn create_with_file_fsync_but_no_dir_fsync_is_gone() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"data")?;
    let r = e.fs.power_cut(Tear::None)?;
    assert!(!e.p("f").exists());
    assert_eq!(r.names_reverted, 1);
    assert_eq!(fs::read_dir(&e.mnt)?.count(), 0);
    Ok(())
}

#[test]
fn rename_without_dir_fsync_is_undone() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("a"), b"A")?;
    fsync_dir(&e.mnt)?;
    fs::rename(e.p("a"), e.p("b"))?;
    assert!(!e.p("a").exists());
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("a"))?, b"A");
    assert!(!e.p("b").exists());
    Ok(())
}

#[test]
fn rename_with_dir_fsync_survives() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("d"))?;
    fsync_dir(&e.mnt)?;
    write_synced(&e.p("d/a"), b"A")?;
    fsync_dir(&e.p("d"))?;
    fs::rename(e.p("d/a"), e.p("b"))?;
    fsync_dir(&e.mnt)?;
    fsync_dir(&e.p("d"))?;
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("b"))?, b"A");
    assert!(!e.p("d/a").exists());
    Ok(())
}

#[test]
fn rename_with_only_destination_synced_leaves_both_names() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("d"))?;
    fsync_dir(&e.mnt)?;
    write_synced(&e.p("d/a"), b"A")?;
    fsync_dir(&e.p("d"))?;
    fs::rename(e.p("d/a"), e.p("b"))?;
    fsync_dir(&e.mnt)?;
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("b"))?, b"A");
    assert_eq!(fs::read(e.p("d/a"))?, b"A");
    assert_eq!(fs::metadata(e.p("b"))?.nlink(), 2);
    Ok(())
}

#[test]
fn mkdir_without_parent_fsync_is_undone() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("gone"))?;
    fs::create_dir(e.p("kept"))?;
    fs::write(e.p("kept/child"), b"x")?;
    fsync_dir(&e.mnt)?;
    fs::create_dir(e.p("late"))?;
    e.fs.power_cut(Tear::None)?;
    assert!(e.p("kept").is_dir());
    assert!(e.p("gone").is_dir());
    assert!(!e.p("late").exists());
    // `kept` itself was never fsynced: it comes back empty.
    assert_eq!(fs::read_dir(e.p("kept"))?.count(), 0);
    fs::remove_dir(e.p("gone"))?;
    fsync_dir(&e.mnt)?;
    e.fs.power_cut(Tear::None)?;
    assert!(!e.p("gone").exists());
    Ok(())
}

#[test]
fn truncate_then_extend_reads_zeros() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), &[b'x'; 10000])?;
    fsync_dir(&e.mnt)?;
    {
        let f = OpenOptions::new().read(true).write(true).open(e.p("f"))?;
        f.set_len(10)?;
        f.set_len(9000)?;
        let mut buf = vec![0; 9000];
        f.read_exact_at(&mut buf, 0)?;
        assert!(buf[..10].iter().all(|&b| b == b'x'));
        assert!(buf[10..].iter().all(|&b| b == 0));
        f.sync_all()?;
    }
    e.fs.power_cut(Tear::None)?;
    let got = fs::read(e.p("f"))?;
    assert_eq!(got.len(), 9000);
    assert!(got[..10].iter().all(|&b| b == b'x'));
    assert!(got[10..].iter().all(|&b| b == 0));
    // An unsynced shrink is undone by a cut.
    fs::File::options().write(true).open(e.p("f"))?.set_len(0)?;
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::metadata(e.p("f"))?.len(), 9000);
    Ok(())
}

#[test]
fn torn_cut_keeps_a_sector_aligned_prefix_of_the_last_write() -> Res {
    let mut lengths = std::collections::BTreeSet::new();
    for seed in 0..12 {
        let mut e = setup_with(Options {
            capacity_bytes: None,
            seed,
        })?;
        write_synced(&e.p("f"), b"")?;
        fsync_dir(&e.mnt)?;
        {
            let f = OpenOptions::new().write(true).open(e.p("f"))?;
            f.write_all_at(&[b'B'; 100], 8192)?; // an earlier write: lost
            f.write_all_at(&[b'A'; 3000], 100)?; // the last write: torn
        }
        let r = e.fs.power_cut(Tear::Sector(512))?;
        let got = fs::read(e.p("f"))?;
        if got.is_empty() {
            assert_eq!(r.writes_torn, 0);
        } else {
            assert_eq!(r.writes_torn, 1);
            let end = got.len();
            assert!(end == 3100 || end % 512 == 0, "torn end {end}");
            assert!(end <= 3100);
            assert!(got[..100].iter().all(|&b| b == 0));
            assert!(got[100..].iter().all(|&b| b == b'A'));
        }
        lengths.insert(got.len());
        e.fs.unmount()?;
    }
    assert!(
        lengths.len() >= 3,
        "seeds gave too little variety: {lengths:?}"
    );
    Ok(())
}

#[test]
fn failed_fsync_loses_its_data_for_good() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"")?;
    fsync_dir(&e.mnt)?;
    {
        let f = OpenOptions::new().read(true).write(true).open(e.p("f"))?;
        f.write_all_at(b"one", 0)?;
        e.fs.fail_next_fsyncs(1);
        assert_eq!(errno(f.sync_all()), Some(libc::EIO));
        f.sync_all()?;
        let mut buf = [0u8; 3];
        f.read_exact_at(&mut buf, 0)?;
        assert_eq!(&buf, b"one", "data stays readable after a failed fsync");
        f.write_all_at(b"two", 8192)?;
        f.sync_all()?;
    }
    e.fs.power_cut(Tear::None)?;
    let got = fs::read(e.p("f"))?;
    assert_eq!(got.len(), 8195);
    assert_eq!(
        &got[..3],
        &[0, 0, 0],
        "data covered by the failed fsync is gone"
    );
    assert_eq!(&got[8192..], b"two");
    Ok(())
}

#[test]
fn failures_aimed_at_a_path_spare_the_others() -> Res {
    let e = setup()?;
    fs::create_dir(e.p("log"))?;
    let target = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(e.p("log/db"))?;
    let other = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(e.p("other"))?;
    e.fs.fail_next_fsyncs_of("log/db", 1);
    e.fs.fail_next_writes_of("log/db", 1);
    other.write_all_at(b"x", 0)?;
    other.sync_all()?;
    assert_eq!(errno(target.write_all_at(b"y", 0)), Some(libc::EIO));
    target.write_all_at(b"y", 0)?;
    other.sync_all()?;
    assert_eq!(errno(target.sync_all()), Some(libc::EIO));
    target.sync_all()?;
    Ok(())
}

#[test]
fn what_a_failed_fsync_left_is_evicted_once_the_file_is_closed() -> Res {
    let e = setup()?;
    write_synced(&e.p("f"), b"old")?;
    fsync_dir(&e.mnt)?;
    {
        let f = OpenOptions::new().read(true).write(true).open(e.p("f"))?;
        f.write_all_at(b"new", 0)?;
        e.fs.fail_next_fsyncs(1);
        assert_eq!(errno(f.sync_all()), Some(libc::EIO));
        let mut buf = [0u8; 3];
        f.read_exact_at(&mut buf, 0)?;
        assert_eq!(&buf, b"new", "still cached while open");
    }
    assert_eq!(fs::read(e.p("f"))?, b"old", "reopened, it reads the disk");
    Ok(())
}

#[test]
fn failed_dir_fsync_does_not_make_names_durable() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"x")?;
    e.fs.fail_next_fsyncs(1);
    assert_eq!(errno(fsync_dir(&e.mnt)), Some(libc::EIO));
    e.fs.power_cut(Tear::None)?;
    assert!(!e.p("f").exists());
    Ok(())
}

#[test]
fn fail_next_writes_returns_eio_once() -> Res {
    let e = setup()?;
    let mut f = File::create(e.p("f"))?;
    e.fs.fail_next_writes(1);
    assert_eq!(errno(f.write_all(b"bad")), Some(libc::EIO));
    f.write_all(b"good")?;
    drop(f);
    assert_eq!(fs::read(e.p("f"))?, b"good");
    Ok(())
}

#[test]
fn set_full_gives_enospc_and_no_free_space() -> Res {
    let e = setup()?;
    let mut f = File::create(e.p("f"))?;
    assert!(statvfs(&e.mnt)?.f_bfree > 0);
    e.fs.set_full(true);
    assert_eq!(errno(f.write_all(b"x")), Some(libc::ENOSPC));
    assert_eq!(errno(File::create(e.p("g"))), Some(libc::ENOSPC));
    assert_eq!(errno(fs::create_dir(e.p("d"))), Some(libc::ENOSPC));
    assert_eq!(errno(f.set_len(100)), Some(libc::ENOSPC));
    let st = statvfs(&e.mnt)?;
    assert_eq!((st.f_bfree, st.f_bavail), (0, 0));
    e.fs.set_full(false);
    f.write_all(b"x")?;
    Ok(())
}

#[test]
fn capacity_fills_for_real() -> Res {
    let cap = 1 << 20;
    let e = setup_with(Options {
        capacity_bytes: Some(cap),
        seed: 1,
    })?;
    let st = statvfs(&e.mnt)?;
    assert_eq!(st.f_blocks * st.f_frsize, cap);
    let mut f = File::create(e.p("big"))?;
    let chunk = vec![7u8; 40_000];
    let mut written = 0u64;
    let err = loop {
        match f.write(&chunk) {
            Ok(n) => written += n as u64,
            Err(err) => break err,
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    assert_eq!(written, cap);
    assert_eq!(statvfs(&e.mnt)?.f_bfree, 0);
    assert_eq!(
        errno(File::create(e.p("small"))?.write_all(b"x")),
        Some(libc::ENOSPC)
    );
    drop(f);
    fs::remove_file(e.p("big"))?;
    fs::write(e.p("small"), b"fits again")?;
    Ok(())
}

#[test]
fn freeze_on_fsync_stops_everything() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("staging"))?;
    write_synced(&e.p("before"), b"kept")?;
    fsync_dir(&e.mnt)?;
    write_synced(&e.p("staging/x"), b"")?;
    fsync_dir(&e.p("staging"))?;
    e.fs.freeze_on(Op::Fsync, Some("x"), 0);
    {
        let mut f = OpenOptions::new().write(true).open(e.p("staging/x"))?;
        f.write_all(b"lost")?;
        assert!(!e.fs.frozen());
        assert_eq!(errno(f.sync_all()), Some(libc::EIO));
        assert!(e.fs.frozen());
        assert_eq!(errno(f.write_all(b"more")), Some(libc::EIO));
    }
    assert_eq!(errno(File::create(e.p("after"))), Some(libc::EIO));
    assert_eq!(errno(fs::metadata(e.p("before"))), Some(libc::EIO));
    e.fs.power_cut(Tear::None)?;
    assert!(!e.fs.frozen());
    assert_eq!(fs::read(e.p("before"))?, b"kept");
    assert_eq!(fs::read(e.p("staging/x"))?, b"");
    assert!(!e.p("after").exists());
    Ok(())
}

#[test]
fn freeze_on_counts_earlier_matches() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("staging"))?;
    fsync_dir(&e.mnt)?;
    e.fs.freeze_on(Op::Rename, Some("staging/"), 2);
    for i in 0..2 {
        fs::write(e.p("staging/tmp"), format!("v{i}"))?;
        fs::rename(e.p("staging/tmp"), e.p(&format!("staging/v{i}")))?;
    }
    assert!(!e.fs.frozen());
    // The third matching rename (matched through its source path) freezes.
    assert_eq!(
        errno(fs::rename(e.p("staging/v0"), e.p("other"))),
        Some(libc::EIO)
    );
    assert!(e.fs.frozen());
    e.fs.power_cut(Tear::None)?;
    // `staging` was never fsynced: it comes back empty.
    assert_eq!(fs::read_dir(e.p("staging"))?.count(), 0);
    assert!(!e.p("other").exists());
    e.fs.freeze_on(Op::Create, Some("/b"), 0);
    fs::create_dir(e.p("a"))?;
    assert_eq!(errno(fs::create_dir(e.p("b"))), Some(libc::EIO));
    e.fs.power_cut(Tear::None)?;
    assert!(!e.p("a").exists());
    Ok(())
}

#[test]
fn append_mode_writes_at_the_end() -> Res {
    let e = setup()?;
    fs::write(e.p("log"), b"ab")?;
    let mut a = OpenOptions::new().append(true).open(e.p("log"))?;
    let mut b = OpenOptions::new().append(true).open(e.p("log"))?;
    a.write_all(b"cd")?;
    b.write_all(b"ef")?;
    a.write_all(b"gh")?;
    drop((a, b));
    assert_eq!(fs::read(e.p("log"))?, b"abcdefgh");
    Ok(())
}

#[test]
fn o_trunc_truncates() -> Res {
    let e = setup()?;
    fs::write(e.p("f"), b"long content")?;
    fs::write(e.p("f"), b"short")?;
    assert_eq!(fs::read(e.p("f"))?, b"short");
    Ok(())
}

#[test]
fn unlinked_open_file_stays_usable() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"synced")?;
    fsync_dir(&e.mnt)?;
    {
        let mut f = OpenOptions::new().read(true).write(true).open(e.p("f"))?;
        fs::remove_file(e.p("f"))?;
        assert!(!e.p("f").exists());
        f.seek(SeekFrom::End(0))?;
        f.write_all(b"+more")?;
        f.seek(SeekFrom::Start(0))?;
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        assert_eq!(s, "synced+more");
    }
    // The unlink was never made durable: the name and the synced data come back.
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("f"))?, b"synced");
    Ok(())
}

#[test]
fn hard_links_share_data_and_survive() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("a"), b"one")?;
    fs::hard_link(e.p("a"), e.p("b"))?;
    assert_eq!(fs::metadata(e.p("a"))?.nlink(), 2);
    assert_eq!(fs::metadata(e.p("a"))?.ino(), fs::metadata(e.p("b"))?.ino());
    fsync_dir(&e.mnt)?;
    fs::remove_file(e.p("a"))?;
    assert_eq!(fs::read(e.p("b"))?, b"one");
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::read(e.p("a"))?, b"one");
    assert_eq!(fs::metadata(e.p("b"))?.nlink(), 2);
    Ok(())
}

#[test]
fn rename_flags_and_directory_rules() -> Res {
    let e = setup()?;
    fs::write(e.p("a"), b"A")?;
    fs::write(e.p("b"), b"B")?;
    let c = |p: PathBuf| CString::new(p.as_os_str().as_bytes());
    let (a, b) = (c(e.p("a"))?, c(e.p("b"))?);
    // SAFETY: valid NUL-terminated paths.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    assert_eq!(r, -1);
    assert_eq!(
        io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    // SAFETY: as above.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(fs::read(e.p("a"))?, b"B");
    assert_eq!(fs::read(e.p("b"))?, b"A");
    fs::rename(e.p("a"), e.p("b"))?;
    assert_eq!(fs::read(e.p("b"))?, b"B");
    fs::create_dir(e.p("d"))?;
    fs::write(e.p("d/x"), b"")?;
    assert_eq!(errno(fs::remove_dir(e.p("d"))), Some(libc::ENOTEMPTY));
    let names: Vec<_> = fs::read_dir(&e.mnt)?
        .map(|d| d.map(|d| d.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, vec!["b", "d"]);
    std::os::unix::fs::symlink("b", e.p("link"))?;
    assert_eq!(fs::read_link(e.p("link"))?, Path::new("b"));
    assert_eq!(fs::read(e.p("link"))?, b"B");
    Ok(())
}

#[test]
fn storage_engine_log_and_atomic_config_survive() -> Res {
    let mut e = setup()?;
    fs::create_dir(e.p("db"))?;
    fsync_dir(&e.mnt)?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(e.p("db/log"))?;
    fsync_dir(&e.p("db"))?;
    for i in 0..20 {
        writeln!(log, "record {i}")?;
        log.sync_data()?;
        if i % 5 == 4 {
            write_synced(&e.p("db/config.tmp"), format!("checkpoint={i}").as_bytes())?;
            fs::rename(e.p("db/config.tmp"), e.p("db/config"))?;
            fsync_dir(&e.p("db"))?;
        }
    }
    // Unsynced tail and an unsynced config update: both lost.
    writeln!(log, "record 20 (unsynced)")?;
    drop(log);
    write_synced(&e.p("db/config.tmp"), b"checkpoint=20")?;
    fs::rename(e.p("db/config.tmp"), e.p("db/config"))?;
    e.fs.power_cut(Tear::Sector(4096))?;
    let expect: String = (0..20).map(|i| format!("record {i}\n")).collect();
    assert_eq!(fs::read_to_string(e.p("db/log"))?, expect);
    assert_eq!(fs::read_to_string(e.p("db/config"))?, "checkpoint=19");
    assert!(!e.p("db/config.tmp").exists());
    Ok(())
}

#[test]
fn real_programs_dd_and_cp() -> Res {
    let mut e = setup()?;
    let dd = |name: &str, conv: &str| {
        std::process::Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", e.p(name).display()))
            .args(["bs=4096", "count=16", conv])
            .output()
    };
    assert!(dd("synced.bin", "conv=fsync")?.status.success());
    assert!(dd("plain.bin", "conv=notrunc")?.status.success());
    fsync_dir(&e.mnt)?;
    let out = std::process::Command::new("cp")
        .arg(e.p("synced.bin"))
        .arg(e.p("copy.bin"))
        .output()?;
    assert!(out.status.success());
    assert_eq!(fs::metadata(e.p("copy.bin"))?.len(), 65536);
    e.fs.power_cut(Tear::None)?;
    assert_eq!(fs::metadata(e.p("synced.bin"))?.len(), 65536);
    assert_eq!(fs::metadata(e.p("plain.bin"))?.len(), 0);
    assert!(!e.p("copy.bin").exists());
    Ok(())
}

#[test]
fn cut_with_a_file_still_open_detaches_the_old_mount() -> Res {
    let mut e = setup()?;
    write_synced(&e.p("f"), b"durable")?;
    fsync_dir(&e.mnt)?;
    let stale = File::open(e.p("f"))?;
    e.fs.power_cut(Tear::None)?;
    let mut buf = [0u8; 4];
    assert_eq!(errno(stale.read_at(&mut buf, 0)), Some(libc::EIO));
    assert_eq!(fs::read(e.p("f"))?, b"durable");
    drop(stale);
    Ok(())
}
