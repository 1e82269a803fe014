//! The AWS profile files (`~/.aws/credentials`, `~/.aws/config`): INI sections of `key = value`
//! lines, read the way the AWS tools read them, for the few keys restorefs uses.

use std::collections::HashMap;

/// Largest profile file read: these are a user's small text files, never megabytes.
pub const MAX_FILE: u64 = 1 << 20;

/// What one profile says (every field optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// `aws_access_key_id`.
    pub access_key_id: Option<String>,
    /// `aws_secret_access_key`.
    pub secret_access_key: Option<String>,
    /// `aws_session_token`.
    pub session_token: Option<String>,
    /// `region`.
    pub region: Option<String>,
    /// `endpoint_url` (the profile's own, or in its `s3 =` sub-section).
    pub endpoint_url: Option<String>,
    /// `ca_bundle`.
    pub ca_bundle: Option<String>,
}

impl Profile {
    /// Fills what `self` lacks from `other`.
    pub fn or(self, other: Profile) -> Profile {
        Profile {
            access_key_id: self.access_key_id.or(other.access_key_id),
            secret_access_key: self.secret_access_key.or(other.secret_access_key),
            session_token: self.session_token.or(other.session_token),
            region: self.region.or(other.region),
            endpoint_url: self.endpoint_url.or(other.endpoint_url),
            ca_bundle: self.ca_bundle.or(other.ca_bundle),
        }
    }
}

/// The sections of an INI text: section name → key → value. Comments (`#`, `;`), blank lines
/// and lines that are neither a section nor `key = value` are skipped; an indented line after
/// `s3 =` is a key of that sub-section, kept as `s3.key`.
pub fn parse(text: &str) -> HashMap<String, HashMap<String, String>> {
    let mut sections: HashMap<String, HashMap<String, String>> = HashMap::new();
    let mut section: Option<String> = None;
    let mut sub: Option<String> = None;
    for raw in text.lines() {
        let indented = raw.starts_with([' ', '\t']);
        let line = raw.trim();
        if line.is_empty() || line.starts_with(['#', ';']) {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_owned());
            sub = None;
            continue;
        }
        let (Some(name), Some((key, value))) = (&section, line.split_once('=')) else {
            continue;
        };
        let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
        let entries = sections.entry(name.clone()).or_default();
        if value.is_empty() && !indented {
            sub = Some(key);
            continue;
        }
        match (&sub, indented) {
            (Some(s), true) => entries.insert(format!("{s}.{key}"), value.to_owned()),
            _ => {
                sub = None;
                entries.insert(key, value.to_owned())
            }
        };
    }
    sections
}

/// Profile `name` from the credentials file's text (section `[name]`) and the config file's
/// (section `[profile name]`, or `[default]`); the credentials file wins, as for the AWS CLI.
pub fn profile(name: &str, credentials: &str, config: &str) -> Profile {
    let pick = |sections: &HashMap<String, HashMap<String, String>>, section: &str| {
        let Some(s) = sections.get(section) else {
            return Profile::default();
        };
        let get = |k: &str| s.get(k).filter(|v| !v.is_empty()).cloned();
        Profile {
            access_key_id: get("aws_access_key_id"),
            secret_access_key: get("aws_secret_access_key"),
            session_token: get("aws_session_token"),
            region: get("region"),
            endpoint_url: get("s3.endpoint_url").or_else(|| get("endpoint_url")),
            ca_bundle: get("ca_bundle"),
        }
    };
    let config_section = if name == "default" {
        "default".to_owned()
    } else {
        format!("profile {name}")
    };
    pick(&parse(credentials), name).or(pick(&parse(config), &config_section))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_read_like_the_aws_cli_reads_them() {
        let creds = "# comment\n[default]\naws_access_key_id = AKIA1\naws_secret_access_key=s1\n\n\
                     [backup]\n  aws_access_key_id = AKIA2 \naws_secret_access_key = s2\n\
                     aws_session_token = tok\n";
        let config = "[default]\nregion = eu-west-1\n[profile backup]\nregion=us-east-2\n\
                      ca_bundle=/ca.pem\n\
                      s3 =\n  endpoint_url = http://minio:9000\n  addressing_style = path\n\
                      output = json\n[backup]\nregion = ignored\n";
        let d = profile("default", creds, config);
        assert_eq!(d.access_key_id.as_deref(), Some("AKIA1"));
        assert_eq!(d.secret_access_key.as_deref(), Some("s1"));
        assert_eq!(d.region.as_deref(), Some("eu-west-1"));
        let b = profile("backup", creds, config);
        assert_eq!(b.access_key_id.as_deref(), Some("AKIA2"));
        assert_eq!(b.session_token.as_deref(), Some("tok"));
        assert_eq!(b.region.as_deref(), Some("us-east-2"));
        assert_eq!(b.endpoint_url.as_deref(), Some("http://minio:9000"));
        assert_eq!(b.ca_bundle.as_deref(), Some("/ca.pem"));
        assert_eq!(parse(config)["profile backup"]["output"], "json");
        assert_eq!(profile("none", creds, config), Profile::default());
    }

    #[test]
    fn odd_profile_files_give_what_they_can_and_never_panic() {
        for text in [
            "",
            "=",
            "[",
            "]",
            "[]\n=\n",
            "key = before any section\n[x]\n",
            "[x]\n\u{feff}=\u{0}\n  = \n\t[y\nk==v=\n",
            "[x]\ns3 =\n  endpoint_url\n",
            "\r\n[x]\r\nregion = r\r\n",
        ] {
            let _ = parse(text);
            let _ = profile("x", text, text);
        }
        assert_eq!(parse("[x]\r\nregion = r\r\n")["x"]["region"], "r");
        assert_eq!(parse("[x]\nk==v=\n")["x"]["k"], "=v=");
        assert!(parse("key = v\n").is_empty());
    }
}
