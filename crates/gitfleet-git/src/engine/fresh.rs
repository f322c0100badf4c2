//! Filling a repository that was just created: what `git clone --mirror` / `--bare` does after
//! `git init`, without gix's fetch machinery.
//!
//! gix 0.90 writes fetched refs through a ref transaction that locks every ref (a lock file
//! created and removed for each, even when the refs end up packed). For a repository with 20,000
//! refs that is 40,000 inode operations, and ext4 makes each allocation slower for minutes after
//! many deletions (`recently_deleted()` in its inode allocator): a 20k-ref mirror took 2-10 s where
//! git takes 0.5 s. A repository being cloned lives in a staging directory nobody else sees, so,
//! like git's clone, we write its refs straight into one `packed-refs` file. There is nothing to
//! negotiate either: the repository is empty, so every advertised object is wanted.
//!
//! [`init_bare`] is `git init --bare --template=`: no sample hooks, no `description`, no probing
//! of the file system (gix's init writes 14 files and probes with 4 more): 5 inodes before the
//! pack where there were 21.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::{BString, ByteSlice};
use gix::protocol::fetch::negotiate;
use gix::protocol::fetch::refmap::{Mapping, SpecIndex};
use gix::protocol::fetch::{Arguments, RefMap};
use gix::protocol::handshake::Ref;
use gix::protocol::transport::client::blocking_io::Transport;

/// The `[core]` of a bare repository, as `git init --bare` writes it on Linux.
const BARE_CORE: &str = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n";

/// Creates an empty bare repository at `path`, which must not exist yet; HEAD names `main` until
/// the clone learns the remote's.
pub(crate) fn init_bare(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)?;
    // What git needs to see a repository (HEAD, objects/, refs/) and the pack directory; git and
    // gix create the rest (refs/heads/, objects/info/) when they first write there.
    for dir in ["objects", "objects/pack", "refs"] {
        std::fs::create_dir(path.join(dir))?;
    }
    std::fs::write(path.join("HEAD"), "ref: refs/heads/main\n")?;
    std::fs::write(path.join("config"), BARE_CORE)
}

/// What [`fetch`] brought.
pub(crate) struct Fetched {
    /// The remote's refs, as listed.
    pub remote_refs: Vec<Ref>,
    /// Size of the pack written (0 if nothing was wanted).
    pub pack_bytes: u64,
    /// The refs to write, by name.
    refs: BTreeMap<BString, Packed>,
    /// The `.keep` file that protects the new pack until refs point into it.
    keep: Option<PathBuf>,
}

/// Lists the remote's refs over `transport`, fetches every object that `refspecs` select into
/// the empty repository `repo`; [`Fetched::write_refs`] then writes the matching refs. HEAD is
/// left to the caller (the remote's is in [`Fetched::remote_refs`]).
pub(crate) fn fetch(
    repo: &gix::Repository,
    transport: &mut Box<dyn Transport + Send>,
    authenticate: &mut dyn FnMut(
        gix::credentials::helper::Action,
    ) -> gix::Result<Option<gix::credentials::protocol::Outcome>>,
    refspecs: &[&str],
    at: &super::Attempt<'_>,
    progress: &mut gix::progress::tree::Item,
) -> gix::Result<Fetched> {
    let interrupt: &AtomicBool = at.interrupt;
    let mut handshake = gix::protocol::handshake(
        &mut *transport,
        gix::protocol::transport::Service::UploadPack,
        authenticate,
        Vec::new(),
        progress,
    )?;
    let fetch_refspecs = refspecs
        .iter()
        .map(|spec| {
            gix::refspec::parse(
                spec.as_bytes().as_bstr(),
                gix::refspec::parse::Operation::Fetch,
            )
            .map(|s| s.to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let context = gix::protocol::fetch::refmap::init::Context {
        fetch_refspecs,
        extra_refspecs: Vec::new(),
    };
    // Every ref: with a prefix filter the server would list `refs/*` literally (and HEAD only).
    let ref_map = handshake
        .prepare_lsrefs_or_extract_refmap(user_agent(), false, context)?
        .fetch_blocking(&mut *progress, &mut *transport, false)?;
    at.meter.listing_done();
    at.req
        .limits
        .check_listing(ref_map.remote_refs.iter().map(|r| r.unpack().0))
        .map_err(gix::Error::from_error)?;

    let refs = packed_refs(&ref_map.mappings);
    let mut pack = None;
    if !refs.is_empty() || detached_head(&ref_map.remote_refs).is_some() {
        let mut negotiate = EmptyRepository {
            ref_map: &ref_map,
            wanted: HashSet::new(),
        };
        let pack_dir = repo.git_dir().join("objects").join("pack");
        let shallow = gix::protocol::fetch::Shallow::NoChange;
        let object_hash = repo.object_hash();
        gix::protocol::fetch(
            &mut negotiate,
            |reader, progress, should_interrupt| {
                let written = gix::odb::pack::Bundle::write_to_directory(
                    reader,
                    Some(&pack_dir),
                    progress,
                    should_interrupt,
                    None::<gix::odb::Handle>,
                    object_hash,
                    gix::odb::pack::bundle::write::Options {
                        thread_limit: Some(crate::threads::pack_threads()),
                        // No object is built bigger than this, however small its delta.
                        alloc_limit_bytes: Some(
                            usize::try_from(at.req.limits.max_object_bytes).unwrap_or(usize::MAX),
                        ),
                        ..Default::default()
                    },
                )?;
                pack = Some(written);
                Ok(true)
            },
            &mut *progress,
            interrupt,
            gix::protocol::fetch::Context {
                handshake: &mut handshake,
                transport: &mut *transport,
                user_agent: user_agent(),
                trace_packetlines: false,
            },
            gix::protocol::fetch::Options {
                shallow_file: repo.git_dir().join("shallow"),
                shallow: &shallow,
                tags: gix::protocol::fetch::Tags::None,
                reject_shallow_remote: false,
            },
        )?;
    }
    if handshake.server_protocol_version == gix::protocol::transport::Protocol::V2 {
        // A courtesy to the server; the data is complete either way.
        gix::protocol::indicate_end_of_interaction(&mut *transport, false).ok();
    }

    let mut pack_bytes = 0;
    let mut keep = None;
    if let Some(mut written) = pack {
        pack_bytes = written
            .data_path
            .as_ref()
            .and_then(|path| std::fs::metadata(path).ok())
            .map_or(0, |m| m.len());
        keep = written.keep_path.take();
    }
    Ok(Fetched {
        remote_refs: ref_map.remote_refs,
        pack_bytes,
        refs,
        keep,
    })
}

impl Fetched {
    /// Writes the refs into `packed-refs` and then lets go of the pack's `.keep` file (the refs
    /// protect the pack from now on, as after gix's fetch).
    pub(crate) fn write_refs(&self, git_dir: &Path) -> std::io::Result<()> {
        if !self.refs.is_empty() {
            write_packed_refs(git_dir, &self.refs)?;
        }
        if let Some(keep) = &self.keep {
            std::fs::remove_file(keep)?;
        }
        Ok(())
    }
}

fn detached_head(remote_refs: &[Ref]) -> Option<gix::ObjectId> {
    remote_refs.iter().find_map(|r| match r {
        Ref::Direct {
            full_ref_name,
            object,
        } if full_ref_name == "HEAD" => Some(*object),
        _ => None,
    })
}

fn user_agent() -> (&'static str, Option<String>) {
    ("agent", Some(format!("git/{}", gix::env::agent())))
}

/// A ref of `packed-refs`: its object and, for an annotated tag, what the tag peels to.
type Packed = (gix::ObjectId, Option<gix::ObjectId>);

/// The local refs the explicit refspecs map to, by name (sorted, as `packed-refs` wants them).
/// An invalid name, or a ref the remote lists without an object (unborn), is skipped: git would
/// refuse the first and has nothing to point the second at.
fn packed_refs(mappings: &[Mapping]) -> BTreeMap<BString, Packed> {
    let mut out = BTreeMap::new();
    for m in mappings {
        let (SpecIndex::ExplicitInRemote(_), Some(local)) = (&m.spec_index, &m.local) else {
            continue;
        };
        if gix::refs::FullName::try_from(local.clone()).is_err() {
            tracing::warn!(name = %local, "skipping a remote ref with an invalid name");
            continue;
        }
        let packed = match &m.remote {
            gix::protocol::fetch::refmap::Source::Ref(r) => match r {
                Ref::Direct { object, .. } => (*object, None),
                Ref::Peeled { tag, object, .. } => (*tag, Some(*object)),
                Ref::Symbolic {
                    tag: Some(tag),
                    object,
                    ..
                } => (*tag, Some(*object)),
                Ref::Symbolic {
                    tag: None, object, ..
                } => (*object, None),
                Ref::Unborn { .. } => continue,
            },
            gix::protocol::fetch::refmap::Source::ObjectId(id) => (*id, None),
        };
        out.insert(local.clone(), packed);
    }
    out
}

/// Writes `packed-refs` as git does (sorted, every annotated tag peeled).
fn write_packed_refs(git_dir: &Path, refs: &BTreeMap<BString, Packed>) -> std::io::Result<()> {
    let mut text = Vec::with_capacity(64 + refs.len() * 64);
    text.extend_from_slice(b"# pack-refs with: peeled fully-peeled sorted \n");
    for (name, (id, peeled)) in refs {
        text.extend_from_slice(id.to_hex().to_string().as_bytes());
        text.push(b' ');
        text.extend_from_slice(name);
        text.push(b'\n');
        if let Some(peeled) = peeled {
            text.push(b'^');
            text.extend_from_slice(peeled.to_hex().to_string().as_bytes());
            text.push(b'\n');
        }
    }
    std::fs::write(git_dir.join("packed-refs"), text)
}

/// Negotiation for a repository without objects: want everything, have nothing, done at once.
struct EmptyRepository<'a> {
    ref_map: &'a RefMap,
    wanted: HashSet<gix::ObjectId>,
}

impl gix::protocol::fetch::Negotiate for EmptyRepository<'_> {
    fn mark_complete_and_common_ref(&mut self) -> gix::Result<negotiate::Action> {
        Ok(negotiate::Action::MustNegotiate {
            remote_ref_target_known: vec![false; self.ref_map.mappings.len()],
        })
    }

    fn add_wants(&mut self, arguments: &mut Arguments, _known: &[bool]) -> bool {
        for m in &self.ref_map.mappings {
            if let (SpecIndex::ExplicitInRemote(_), Some(id)) = (&m.spec_index, m.remote.as_id())
                && self.wanted.insert(id.to_owned())
            {
                arguments.want(id);
            }
        }
        // A detached HEAD's commit, which no ref may reach (HEAD is pointed at it afterwards).
        if let Some(head) = detached_head(&self.ref_map.remote_refs)
            && self.wanted.insert(head)
        {
            arguments.want(head);
        }
        !self.wanted.is_empty()
    }

    fn one_round(
        &mut self,
        _state: &mut negotiate::one_round::State,
        _arguments: &mut Arguments,
        _previous_response: Option<&gix::protocol::fetch::Response>,
    ) -> gix::Result<(negotiate::Round, bool)> {
        Ok((
            negotiate::Round {
                haves_sent: 0,
                in_vain: 0,
                haves_to_send: 0,
                previous_response_had_at_least_one_in_common: false,
            },
            true,
        ))
    }
}
