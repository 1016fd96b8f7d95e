//! Blob transfers run side by side; the first failure stops the rest.

use tokio::task::JoinSet;

/// Waits for every task and returns their results, or the first error (the other tasks are
/// aborted then). A task that panicked becomes `panicked(message)`.
pub async fn join_first_error<T: 'static, E: 'static>(
    mut tasks: JoinSet<Result<T, E>>,
    panicked: impl Fn(String) -> E,
) -> Result<Vec<T>, E> {
    let mut out = Vec::new();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(done)) => out.push(done),
            Ok(Err(e)) => {
                if first_error.is_none() {
                    first_error = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error.get_or_insert(panicked(e.to_string()));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
