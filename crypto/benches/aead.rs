//! Criterion benchmarks of the crypto primitives on the daemon's paths.
//!
//! - `aead_seal` / `aead_open`: AES-256-GCM on both backends (`ring`,
//!   `aes-gcm`) at 64 B, 700 B, 1400 B (one datagram), 8 KiB and 64 KiB,
//!   with a 24-byte header as associated data; throughput in bytes. Sealing
//!   works in a buffer with spare capacity, as a link does; opening gets a
//!   fresh copy of the sealed frame per iteration, made outside the timing.
//! - `kdf/group_key`: one client group key derivation (one HMAC-SHA256).
//! - `kdf/link_key`: one link key derivation (HKDF-SHA256).
//! - `ed25519/sign_200B`, `ed25519/verify_200B`: a daemon signature over a
//!   200-byte body.
//!
//! Run with `cargo bench -p ringfence-crypto --bench aead`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ringfence_crypto::aead::{Backend, Key32, Nonce, TAG_LEN};
use ringfence_crypto::identity::SecretIdentity;
use ringfence_crypto::kdf::{group_key, link_key};

const SIZES: [usize; 5] = [64, 700, 1400, 8 * 1024, 64 * 1024];

/// Associated data: the size of a link frame header.
const AAD: [u8; 24] = [0x5a; 24];

fn seal(c: &mut Criterion) {
    let key = Key32::generate(&mut ChaCha20Rng::seed_from_u64(1));
    let mut g = c.benchmark_group("aead_seal");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for backend in Backend::ALL {
            let aead = backend.key(&key);
            let nonce = Nonce::new(1, 1);
            let mut buf = Vec::with_capacity(size + TAG_LEN);
            buf.resize(size, 0x42);
            g.bench_with_input(BenchmarkId::new(backend.name(), size), &size, |b, &size| {
                b.iter(|| {
                    buf.truncate(size);
                    aead.seal_in_place(black_box(&nonce), &AAD, &mut buf).unwrap();
                })
            });
        }
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let key = Key32::generate(&mut ChaCha20Rng::seed_from_u64(2));
    let mut g = c.benchmark_group("aead_open");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for backend in Backend::ALL {
            let aead = backend.key(&key);
            let nonce = Nonce::new(1, 1);
            let mut sealed = vec![0x42; size];
            aead.seal_in_place(&nonce, &AAD, &mut sealed).unwrap();
            g.bench_with_input(BenchmarkId::new(backend.name(), size), &size, |b, _| {
                b.iter_batched_ref(
                    || sealed.clone(),
                    |buf| {
                        aead.open_in_place(black_box(&nonce), &AAD, buf).unwrap();
                    },
                    BatchSize::SmallInput,
                )
            });
        }
    }
    g.finish();
}

fn kdf(c: &mut Criterion) {
    let server_key = Key32::generate(&mut ChaCha20Rng::seed_from_u64(3));
    let mut g = c.benchmark_group("kdf");
    g.bench_function("group_key", |b| {
        b.iter(|| group_key(black_box(&server_key), black_box(b"chat.room-17"), black_box(&[7u8; 18])))
    });
    g.bench_function("link_key", |b| {
        b.iter(|| link_key(black_box(&server_key), black_box(b"ring-0000000001"), black_box(7)))
    });
    g.finish();
}

fn ed25519(c: &mut Criterion) {
    let identity = SecretIdentity::generate(&mut ChaCha20Rng::seed_from_u64(4));
    let public = identity.public();
    let body = [0x33u8; 200];
    let signature = identity.sign(&body);
    let mut g = c.benchmark_group("ed25519");
    g.bench_function("sign_200B", |b| b.iter(|| identity.sign(black_box(&body))));
    g.bench_function("verify_200B", |b| {
        b.iter(|| public.verify(black_box(&body), black_box(&signature)).unwrap())
    });
    g.finish();
}

/// One X25519 operation, the unit of TGDH's cost (a member does O(log n)
/// per membership change).
fn x25519(c: &mut Criterion) {
    let secret = x25519_dalek::StaticSecret::from([0x5au8; 32]);
    let public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([0xa5u8; 32]));
    let mut g = c.benchmark_group("x25519");
    g.bench_function("diffie_hellman", |b| b.iter(|| secret.diffie_hellman(black_box(&public))));
    g.finish();
}

/// Runs every group with short timings; command-line options override them.
fn benches() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    seal(&mut c);
    open(&mut c);
    kdf(&mut c);
    ed25519(&mut c);
    x25519(&mut c);
}

criterion_main!(benches);
