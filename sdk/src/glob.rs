//! The patterns routes and plugins use to name registries and repositories:
//! `registry.example.com`, `registry.example.com/*`, `*.example.com/team/*`,
//! `*`. `*` matches any run of characters, `/` included; there is no other
//! special character, so a pattern reads the way it matches.

use crate::transport::Locator;

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (possibly empty).
pub fn matches(pattern: &str, text: &str) -> bool {
    // Iterative wildcard matching with one backtrack point: linear in
    // practice, never exponential.
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_pi, star_ti)) = star {
            pi = star_pi + 1;
            ti = star_ti + 1;
            star = Some((star_pi, star_ti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Whether `pattern` names `locator`: a pattern with a `/` is matched
/// against `registry/repository`, one without against the registry alone
/// (so `registry.example.com` covers all of its repositories).
pub fn matches_locator(pattern: &str, locator: &Locator) -> bool {
    if pattern.contains('/') {
        matches(
            pattern,
            &format!("{}/{}", locator.registry, locator.repository),
        )
    } else {
        matches(pattern, &locator.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(registry: &str, repository: &str) -> Locator {
        Locator {
            registry: registry.into(),
            repository: repository.into(),
        }
    }

    #[test]
    fn stars_match_any_run_and_literals_match_themselves() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything/at/all"));
        assert!(matches("a*c", "abbbc"));
        assert!(matches("a*c", "ac"));
        assert!(!matches("a*c", "abd"));
        assert!(matches("*.example.com", "r.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(matches("x*y*z", "xaaybbz"));
        assert!(!matches("x*y*z", "xaaybb"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }

    #[test]
    fn patterns_without_a_slash_name_whole_registries() {
        assert!(matches_locator("host:5000", &at("host:5000", "team/app")));
        assert!(!matches_locator("host", &at("host:5000", "app")));
        assert!(matches_locator("host:5000/*", &at("host:5000", "team/app")));
        assert!(matches_locator(
            "host:5000/team/*",
            &at("host:5000", "team/app")
        ));
        assert!(!matches_locator(
            "host:5000/team/*",
            &at("host:5000", "other/app")
        ));
        assert!(matches_locator("*", &at("docker.io", "library/alpine")));
    }
}
