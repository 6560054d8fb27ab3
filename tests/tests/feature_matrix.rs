//! Every on-disk format of the mkfs feature matrix, read through safemount,
//! must show exactly the source tree, and exactly what the kernel's ext4
//! shows for the same image (nanosecond times, statfs, hole maps).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step must fail the test, with its error"
)]

use safemount_tests::broker::Broker;
use safemount_tests::image::{self, FsConfig};
use safemount_tests::kernel::KernelMount;
use safemount_tests::procfs;
use safemount_tests::snapshot::{self, Against, WalkOpts, assert_same};
use safemount_tests::tree::{self, MIB, TreeSpec};
use safemount_tests::util::{TempDir, require_root, sha256_file};

fn run_config(name: &str) {
    if !require_root() {
        return;
    }
    let cfg: &FsConfig = image::config(name).expect("config in MATRIX");
    let t0 = std::time::Instant::now();
    let tmp = TempDir::new(&format!("fm-{name}")).unwrap();
    let src = tmp.join("src");
    let spec = TreeSpec {
        huge_file: name == "defaults",
        block_size: cfg.block_size,
        wide_times: !cfg.small_inodes,
        trailing_holes: name != "inline_data",
        ..TreeSpec::standard()
    };
    tree::generate(&src, &spec).unwrap();
    let img = tmp.join("fs.img");
    image::make_image(&src, &img, cfg, 1024 * MIB, &[], true).unwrap();
    let sha_before = sha256_file(&img).unwrap();

    let opts = WalkOpts::default();
    let source = snapshot::snapshot(
        &src,
        &WalkOpts {
            seek_map: false,
            ..opts.clone()
        },
    );

    // The oracle first: if the kernel disagrees with the source, the
    // harness (or mkfs) is wrong, not safemount.
    let kmnt = tmp.join("kernel");
    std::fs::create_dir(&kmnt).unwrap();
    let kernel = KernelMount::mount(&img, &kmnt).unwrap();
    let ksnap = snapshot::snapshot(&kmnt, &opts);
    let kstat = snapshot::statvfs(&kmnt).unwrap();
    assert_same(
        &source,
        &ksnap,
        Against::Source,
        &format!("[{name}] harness check: kernel mount vs source tree"),
    );

    let broker = Broker::start().unwrap();
    let mnt = tmp.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    if let Err(e) = broker.mount(&img, &mnt, "ro") {
        panic!(
            "[{name}] safemount mount failed: {e}\nbroker log:\n{}",
            broker.log_tail(20)
        );
    }
    // Seen mounted: the "still mounted" check after unmount is then real.
    assert!(
        procfs::is_mounted(&mnt),
        "[{name}] {} not in the mount table after mounting",
        mnt.display()
    );
    let ssnap = snapshot::snapshot(&mnt, &opts);
    let sstat = snapshot::statvfs(&mnt);
    kernel.unmount().unwrap();

    let unmounted = broker.unmount(&mnt);
    let sha_after = sha256_file(&img).unwrap();

    assert_same(
        &source,
        &ssnap,
        Against::Source,
        &format!("[{name}] safemount vs source tree"),
    );
    assert_same(
        &ksnap,
        &ssnap,
        Against::Kernel,
        &format!("[{name}] safemount vs kernel mount"),
    );
    let sstat = sstat.unwrap_or_else(|e| panic!("[{name}] statvfs on safemount: {e}"));
    assert_eq!(
        sstat, kstat,
        "[{name}] statvfs: safemount (left) vs kernel (right)"
    );
    if let Err(e) = unmounted {
        panic!(
            "[{name}] unmount failed: {e}\nbroker log:\n{}",
            broker.log_tail(20)
        );
    }
    assert!(
        !procfs::is_mounted(&mnt),
        "[{name}] still mounted after unmount"
    );
    assert_eq!(
        sha_before, sha_after,
        "[{name}] image bytes changed by a read-only mount"
    );
    println!(
        "[{name}] ok: {} entries identical to source and kernel, statvfs identical, {:.1} s",
        ssnap.entries.len(),
        t0.elapsed().as_secs_f64()
    );
}

macro_rules! matrix_test {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_config(stringify!($name));
            }
        )*
    };
}

matrix_test!(
    defaults,
    ext2,
    ext3,
    no_metadata_csum,
    inline_data,
    block1024,
    inode128,
    bigalloc,
    meta_bg,
    no_64bit
);

#[test]
fn matrix_is_complete() {
    // Every config of the matrix has a test above.
    let tested = [
        "defaults",
        "ext2",
        "ext3",
        "no_metadata_csum",
        "inline_data",
        "block1024",
        "inode128",
        "bigalloc",
        "meta_bg",
        "no_64bit",
    ];
    for c in image::MATRIX {
        assert!(tested.contains(&c.name), "config {} has no test", c.name);
    }
}
