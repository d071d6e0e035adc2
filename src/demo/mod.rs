//! `portcullis demo`: placeholder replaced below.
pub async fn run(
    _d: std::time::Duration,
    _s: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    Err("demo not built yet".into())
}
