//! `verify`: read every object a checkpoint references and check its size and hash, without
//! restoring — the whole of R5's checking, none of its writing.

use super::*;

/// What [`verify_checkpoint`] checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The metadata path.
    pub path: String,
    /// Objects read and hashed.
    pub objects: u64,
    /// Bytes read and hashed.
    pub bytes: u64,
    /// One line per missing, short, long or altered object (empty: the checkpoint is whole).
    pub problems: Vec<String>,
}

/// Reads every object a checkpoint references and checks its size and hash, without restoring.
/// Metadata that cannot be read is an error; damaged objects are listed in the report.
pub async fn verify_checkpoint(
    store: &dyn Store,
    source: &RestoreSource,
    parallelism: usize,
) -> Result<VerifyReport> {
    verify_checkpoint_with_progress(store, source, parallelism, None).await
}

/// [`verify_checkpoint`], telling `progress` how many more bytes were read and hashed (every byte
/// of every distinct object once, including those of damaged objects read before the damage
/// showed: a bar over [`VerifyReport::bytes`] may end short of its total only on problems).
pub async fn verify_checkpoint_with_progress(
    store: &dyn Store,
    source: &RestoreSource,
    parallelism: usize,
    progress: Option<Progress>,
) -> Result<VerifyReport> {
    let (path, metadata) = read_metadata(store, source).await?;
    let mut work: Vec<(String, String, ContentHash, u64)> = metadata
        .backends
        .iter()
        .flat_map(assemblies)
        .flat_map(|assembly| {
            let local_name = assembly.local_name;
            assembly
                .parts
                .into_iter()
                .map(move |(object, hash, size)| (object, local_name.clone(), hash, size))
        })
        .collect();
    work.sort();
    work.dedup();
    let outcomes: Vec<std::result::Result<u64, String>> =
        stream::iter(work.into_iter().map(|(object, local, hash, size)| {
            let progress = progress.clone();
            async move {
                let checked = async {
                    let mut chunks = verified_stream(store, &object, &local, hash, size).await?;
                    while let Some(chunk) = chunks.next().await {
                        let chunk = chunk?;
                        if let Some(progress) = &progress {
                            progress(chunk.len() as u64);
                        }
                    }
                    Ok::<_, Error>(size)
                };
                checked.await.map_err(|e| e.to_string())
            }
        }))
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    let mut report = VerifyReport {
        path,
        ..VerifyReport::default()
    };
    for outcome in outcomes {
        report.objects += 1;
        match outcome {
            Ok(bytes) => report.bytes += bytes,
            Err(problem) => report.problems.push(problem),
        }
    }
    report.problems.sort();
    if !report.problems.is_empty() {
        // Files missing because the checkpoint was discarded while it was read are not damage.
        ensure_complete(store, &metadata).await.map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                Error::not_found(format!(
                    "checkpoint `{}` was discarded while it was being verified",
                    metadata.metadata_path()
                ))
            } else {
                e
            }
        })?;
    }
    Ok(report)
}
