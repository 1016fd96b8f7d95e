//! ADD of a local file: unpacked when it is a tar archive (plain, gzip, zstd, bzip2, xz), as
//! BuildKit's `isArchivePath` decides: the decompressed stream must start with a tar header that
//! Go's `tar.Reader.Next` accepts (a valid checksum, any format: v7, ustar, GNU, PAX). Anything
//! else, an xz-compressed text file too, is copied as it is.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::oci::Compression;

use super::error::BuildError;

/// How a file is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// Not compressed (maybe a plain tar).
    Plain,
    /// Decoded in process.
    Native(Compression),
    /// Decoded by this tool's `-dc` (bzip2, xz).
    Tool(&'static str),
}

fn packing(head: &[u8]) -> Packing {
    if head.starts_with(&[0x1f, 0x8b]) {
        Packing::Native(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Packing::Native(Compression::Zstd)
    } else if head.starts_with(b"BZh") {
        Packing::Tool("bzip2")
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Packing::Tool("xz")
    } else {
        Packing::Plain
    }
}

/// The decompressed bytes of a file; a decompressing tool's process is ended on drop unless
/// [`Stream::finish`] waited for it.
struct Stream {
    reader: Box<dyn Read + Send>,
    child: Option<(Child, &'static str)>,
}

impl Stream {
    fn open(path: &Path, packing: Packing) -> Result<Stream, BuildError> {
        let file = || std::fs::File::open(path).map_err(BuildError::io("open", path));
        let reader: Box<dyn Read + Send> = match packing {
            Packing::Plain => Box::new(file()?),
            Packing::Native(Compression::Gzip) => Box::new(flate2::read::GzDecoder::new(file()?)),
            Packing::Native(_) => Box::new(
                zstd::stream::read::Decoder::new(file()?).map_err(BuildError::io("read", path))?,
            ),
            Packing::Tool(tool) => {
                let mut child = Command::new(tool)
                    .arg("-dc")
                    .arg(path)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|source| BuildError::Decompressor {
                        tool: tool.to_string(),
                        path: path.to_path_buf(),
                        source,
                    })?;
                let Some(stdout) = child.stdout.take() else {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(BuildError::DecompressorFailed {
                        tool: tool.to_string(),
                        path: path.to_path_buf(),
                    });
                };
                return Ok(Stream {
                    reader: Box::new(stdout),
                    child: Some((child, tool)),
                });
            }
        };
        Ok(Stream {
            reader,
            child: None,
        })
    }

    /// Waits for the decompressing tool, which must have succeeded.
    fn finish(mut self, path: &Path) -> Result<(), BuildError> {
        if let Some((mut child, tool)) = self.child.take() {
            let status = child
                .wait()
                .map_err(BuildError::io("wait for decompressor of", path))?;
            if !status.success() {
                return Err(BuildError::DecompressorFailed {
                    tool: tool.to_string(),
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some((child, _)) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the stream starts with a tar entry: a header with a valid checksum (an empty or
/// all-zero stream, a short or corrupt first block are not archives).
fn starts_with_tar_entry(reader: impl Read) -> bool {
    let mut archive = tar::Archive::new(reader);
    match archive.entries() {
        Ok(mut entries) => matches!(entries.next(), Some(Ok(_))),
        Err(_) => false,
    }
}

/// Extracts `path` into `into` when it is a tar archive; `false` when it is not one (ADD then
/// copies it as a file).
pub fn unpack_archive(path: &Path, into: &Path) -> Result<bool, BuildError> {
    let mut head = [0u8; 6];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(BuildError::io("read", path))?;
    let packing = packing(&head[..n]);
    let mut probe = Stream::open(path, packing)?;
    if !starts_with_tar_entry(&mut probe.reader) {
        return Ok(false);
    }
    drop(probe);
    std::fs::create_dir_all(into).map_err(BuildError::io("create", into))?;
    let (reader, compression): (Box<dyn Read + Send>, Compression) = match packing {
        Packing::Native(c) => (
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).map_err(BuildError::io("open", path))?,
            )),
            c,
        ),
        Packing::Plain => (
            Box::new(std::io::BufReader::new(
                std::fs::File::open(path).map_err(BuildError::io("open", path))?,
            )),
            Compression::None,
        ),
        Packing::Tool(_) => {
            let mut stream = Stream::open(path, packing)?;
            let reader = std::mem::replace(&mut stream.reader, Box::new(std::io::empty()));
            let result = crate::layer::extract_layer(
                reader,
                Compression::None,
                into,
                &crate::layer::ExtractOptions::apply(),
            );
            let finished = stream.finish(path);
            result?;
            finished?;
            return Ok(true);
        }
    };
    crate::layer::extract_layer(
        reader,
        compression,
        into,
        &crate::layer::ExtractOptions::apply(),
    )?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(format: fn(&mut tar::Header)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_old();
        format(&mut h);
        h.set_path("f.txt").unwrap();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn a_v7_tar_without_magic_is_an_archive() {
        let v7 = tar_of(|_| {});
        assert_ne!(&v7[257..262], b"ustar");
        assert!(starts_with_tar_entry(&v7[..]));
    }

    #[test]
    fn text_empty_zeros_and_a_bad_checksum_are_not_archives() {
        assert!(!starts_with_tar_entry(&b"release notes\n"[..]));
        assert!(!starts_with_tar_entry(&b""[..]));
        assert!(!starts_with_tar_entry(&[0u8; 1024][..]));
        let mut bad = tar_of(|_| {});
        bad[0] ^= 1;
        assert!(!starts_with_tar_entry(&bad[..]));
    }
}
