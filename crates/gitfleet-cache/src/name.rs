//! Entry names: what a user calls an entry, and the directory name it gets under the cache root.
//! A name is one path segment that cannot climb, hide or collide with the cache's own files.

use crate::CacheError;

/// The longest name accepted.
const MAX_NAME: usize = 100;

/// `name` if it may name an entry: 1-100 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub(crate) fn checked(name: &str) -> Result<&str, CacheError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(CacheError::InvalidName {
            name: gitfleet_git::printable(name),
        })
    }
}

/// The name an entry gets when none is given: the last path segment of the source, without a
/// `.git` suffix (`https://host/org/utils.git` and `/src/utils` are both `utils`).
pub(crate) fn default_for(source: &str) -> Result<String, CacheError> {
    let trimmed = source.trim_end_matches('/');
    let last = trimmed
        .rsplit(['/', ':'])
        .next()
        .unwrap_or(trimmed)
        .trim_end_matches(".git");
    checked(last)
        .map(str::to_string)
        .map_err(|_| CacheError::NoDefaultName {
            input: gitfleet_git::scrub_userinfo(source),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_segment() {
        for good in ["utils", "my-project", "a.b_c", "R2"] {
            assert_eq!(checked(good).ok(), Some(good));
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-x",
            "a/b",
            "a b",
            "ä",
            &"x".repeat(101),
        ] {
            assert!(checked(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_default_name_is_the_last_segment() {
        for (source, name) in [
            ("https://github.com/org-a/utils.git", "utils"),
            ("git@github.com:org/tool.git", "tool"),
            ("git@github.com:tool.git", "tool"),
            ("/src/projects/my-project/", "my-project"),
        ] {
            assert_eq!(default_for(source).ok().as_deref(), Some(name), "{source}");
        }
        assert!(default_for("https://host/.git").is_err());
        assert!(default_for("/tmp/with space").is_err());
    }
}
