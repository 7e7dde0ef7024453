//! The trust boundary's decisions, pure and tested here: which origin an
//! answer came from, which token realm may receive the credentials, how a
//! token is widened for a `DELETE`, and how much of a value a registry
//! sent may be echoed.

/// The scopes with `delete` added where a `DELETE` needs it, or `None` if
/// they already have it.
pub(super) fn widen(scopes: &[String], method: &reqwest::Method) -> Option<Vec<String>> {
    if method != reqwest::Method::DELETE {
        return None;
    }
    let mut changed = false;
    let wider = scopes
        .iter()
        .map(|s| match s.rsplit_once(':') {
            Some((head, actions)) if !actions.split(',').any(|a| a == "delete" || a == "*") => {
                changed = true;
                format!("{head}:{actions},delete")
            }
            _ => s.clone(),
        })
        .collect();
    changed.then_some(wider)
}

/// True if `url` has the same scheme, host and port as `base`.
pub(super) fn same_origin(url: &url::Url, base: &url::Url) -> bool {
    url.origin() == base.origin()
}

/// Whether a redirect from the registry at `base` may be followed to
/// `to`: to the registry's own scheme and host, or to HTTPS (a blob store such as
/// S3 behind Harbor) on a host that is not a loopback, link-local or
/// private address, unless the registry itself is on such an address.
/// Otherwise a registry could point the relay at what only the jump VM
/// reaches (a blind SSRF). The error names the host. Host names are not
/// resolved here: the rule catches addresses written into the redirect.
pub(super) fn check_redirect(to: &url::Url, base: &url::Url) -> Result<(), String> {
    // The registry's own scheme and host (another port: its blob store
    // beside it) reach nothing the registry could not reach itself.
    if to.scheme() == base.scheme() && to.host() == base.host() {
        return Ok(());
    }
    if to.scheme() != "https" {
        return Err(format!(
            "it redirected to {}://{}, which is not HTTPS on another host; not followed",
            cut(to.scheme()),
            host_of(to)
        ));
    }
    if inward(to) && !inward(base) {
        return Err(format!(
            "it redirected to {}, a loopback, link-local or private address that the registry itself is not on; not followed",
            host_of(to)
        ));
    }
    Ok(())
}

/// True for `localhost` and loopback, link-local, private and unspecified
/// addresses.
fn inward(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                // 100.64.0.0/10, carrier-grade NAT
                || (ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64)
        }
        Some(url::Host::Ipv6(ip)) => {
            let mapped = ip.to_ipv4_mapped();
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || mapped
                    .is_some_and(|v4| v4.is_loopback() || v4.is_private() || v4.is_link_local())
        }
        None => true,
    }
}

/// `host[:port]` of a URL, for messages.
pub(super) fn host_of(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => url.as_str().chars().take(80).collect(),
    }
}

/// Whether a token realm may receive the credentials of the registry at
/// `base`: HTTPS (or plain HTTP only for a plain-HTTP registry), on the
/// registry's own host and port or on one of `allowed` (`host` for any
/// port, `host:port` for one). The error says why not.
pub(super) fn check_realm(realm: &str, base: &url::Url, allowed: &[String]) -> Result<(), String> {
    let u = url::Url::parse(realm)
        .map_err(|_| format!("its token realm `{}` is not a URL", cut(realm)))?;
    let host = u.host_str().unwrap_or_default();
    match u.scheme() {
        "https" => {}
        "http" if base.scheme() == "http" => {}
        "http" => {
            return Err(format!(
                "its token realm http://{} is plain HTTP while the registry is HTTPS; the password would cross the network in clear text, so it is not sent",
                host_of(&u)
            ));
        }
        other => return Err(format!("its token realm has scheme `{}`", cut(other))),
    }
    let same = u.host_str() == base.host_str()
        && u.port_or_known_default() == base.port_or_known_default();
    let listed = allowed.iter().any(|a| {
        let (h, p) = match a.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse::<u16>().ok()),
            _ => (a.as_str(), None),
        };
        h.eq_ignore_ascii_case(host) && p.is_none_or(|p| Some(p) == u.port_or_known_default())
    });
    if same || listed {
        Ok(())
    } else {
        Err(format!(
            "its token realm is on another host ({}), which is not in token_realm_hosts; if that host really issues this registry's tokens, add token_realm_hosts = [\"{}\"] to the registry",
            host_of(&u),
            host_of(&u)
        ))
    }
}

/// At most 120 characters of a value a registry sent, for messages (an
/// answer must not be able to blow up an error message, a log line or the
/// job store).
pub fn cut(s: &str) -> String {
    if s.chars().count() <= 120 {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(120).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_is_followed_only_to_its_origin_or_outward_https() {
        let u = |s: &str| -> url::Url { s.parse().expect("url") };
        let harbor = u("https://harbor.example");
        assert!(check_redirect(&u("https://harbor.example/v2/x"), &harbor).is_ok());
        assert!(check_redirect(&u("https://s3.amazonaws.com/bucket/blob"), &harbor).is_ok());
        for bad in [
            "http://s3.example/blob",
            "file:///etc/passwd",
            "https://127.0.0.1:2375/containers",
            "https://localhost/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/x",
            "https://192.168.1.1/x",
            "https://[::1]/x",
            "https://[fe80::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://100.64.0.1/x",
        ] {
            let e = check_redirect(&u(bad), &harbor).expect_err(bad);
            assert!(e.contains("not followed"), "{bad}: {e}");
        }
        assert!(
            check_redirect(&u("https://[::1]/x"), &harbor)
                .expect_err("loopback")
                .contains("[::1]"),
            "the host is named"
        );
        // A registry on a private address may send its clients to another.
        let inside = u("https://10.0.0.5:8443");
        assert!(check_redirect(&u("https://10.0.0.6/blob"), &inside).is_ok());
        assert!(check_redirect(&u("http://10.0.0.6/blob"), &inside).is_err());
        let plain = u("http://127.0.0.1:5000");
        assert!(check_redirect(&u("http://127.0.0.1:5000/v2/x"), &plain).is_ok());
        assert!(
            check_redirect(&u("http://127.0.0.1:9000/store"), &plain).is_ok(),
            "its own host on another port"
        );
        assert!(check_redirect(&u("http://localhost:9000/store"), &plain).is_err());
    }

    #[test]
    fn a_token_realm_must_be_on_the_registry_or_listed_and_never_downgrade() {
        let https: url::Url = "https://harbor.example".parse().expect("url");
        let http: url::Url = "http://10.0.0.5:5000".parse().expect("url");
        let none: Vec<String> = vec![];
        assert!(check_realm("https://harbor.example/service/token", &https, &none).is_ok());
        assert!(check_realm("https://harbor.example:443/service/token", &https, &none).is_ok());
        let e = check_realm("http://harbor.example/service/token", &https, &none)
            .expect_err("downgrade");
        assert!(e.contains("plain HTTP"), "{e}");
        let e = check_realm("https://other-host/steal", &https, &none).expect_err("other host");
        assert!(
            e.contains("other-host") && e.contains("token_realm_hosts"),
            "{e}"
        );
        let e = check_realm("https://harbor.example:8443/t", &https, &none).expect_err("port");
        assert!(e.contains("harbor.example:8443"), "{e}");
        let allowed = vec!["auth.docker.io".to_string(), "127.0.0.1:9000".into()];
        assert!(check_realm("https://auth.docker.io/token", &https, &allowed).is_ok());
        assert!(check_realm("https://127.0.0.1:9000/token", &https, &allowed).is_ok());
        assert!(check_realm("https://127.0.0.1:9001/token", &https, &allowed).is_err());
        // Listing a host never allows plain HTTP for an HTTPS registry.
        assert!(check_realm("http://auth.docker.io/token", &https, &allowed).is_err());
        // A plain-HTTP registry may use a plain-HTTP realm on its own host.
        assert!(check_realm("http://10.0.0.5:5000/token", &http, &none).is_ok());
        assert!(check_realm("not a url", &https, &none).is_err());
    }

    #[test]
    fn a_delete_widens_its_token_to_the_delete_action() {
        let scopes = vec!["repository:p/r:pull,push".to_string()];
        assert_eq!(
            widen(&scopes, &reqwest::Method::DELETE),
            Some(vec!["repository:p/r:pull,push,delete".to_string()])
        );
        assert_eq!(widen(&scopes, &reqwest::Method::GET), None);
        let has = vec!["repository:p/r:delete".to_string()];
        assert_eq!(widen(&has, &reqwest::Method::DELETE), None);
    }
}
