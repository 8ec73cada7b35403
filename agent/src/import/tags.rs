//! fail2ban's helpers for option values: `<tag>` substitution between a
//! filter's (or action's) options, `name[key=value, ...]` arguments, the
//! split of an `action` value into actions, and word lists.

use std::collections::BTreeSet;

/// fail2ban's `MAX_TAG_REPLACE_COUNT`.
const MAX_TAG_REPLACE_COUNT: usize = 25;

/// The next `<name>` (no blank, `<` or `>` inside) at or after `from`:
/// (start, end, name).
pub fn next_tag(value: &str, from: usize) -> Option<(usize, usize, &str)> {
    let bytes = value.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let mut j = i + 1;
            while j < bytes.len() && !matches!(bytes[j], b' ' | b'<' | b'>') {
                j += 1;
            }
            if j < bytes.len() && bytes[j] == b'>' && j > i + 1 {
                return Some((i, j + 1, &value[i + 1..j]));
            }
        }
        i += 1;
    }
    None
}

/// fail2ban's `substituteRecursiveTags`: replaces `<name>` in every value
/// by option `name` (or what `lookup` finds), repeatedly, until nothing
/// changes. Unknown tags (`<HOST>`, `<F-USER>`) stay as they are.
pub fn substitute_recursive_tags<E>(
    tags: &mut [(String, String)],
    ignore: &BTreeSet<String>,
    lookup: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
) -> Result<Result<(), String>, E> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut rep_counts: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, usize>,
    > = Default::default();
    loop {
        let mut repeat = false;
        for idx in 0..tags.len() {
            let tag = tags[idx].0.clone();
            if ignore.contains(&tag) || done.contains(&tag) {
                continue;
            }
            let original = tags[idx].1.clone();
            let mut value = original.clone();
            let mut counts = rep_counts.get(&tag).cloned().unwrap_or_default();
            let mut found = next_tag(&value, 0).map(|(s, e, n)| (s, e, n.to_string()));
            while let Some((start, end, rtag)) = found {
                if ignore.contains(&rtag) {
                    found = next_tag(&value, end).map(|(s, e, n)| (s, e, n.to_string()));
                    continue;
                }
                if rtag == tag || counts.get(&rtag).copied().unwrap_or(1) > MAX_TAG_REPLACE_COUNT {
                    return Ok(Err(format!(
                        "`{tag}` refers to itself through <{rtag}>: the tags cannot be resolved"
                    )));
                }
                let mut repl = tags
                    .iter()
                    .find(|(k, _)| *k == rtag)
                    .map(|(_, v)| v.clone());
                if repl.is_none() {
                    repl = lookup(&rtag)?;
                }
                let Some(repl) = repl else {
                    found = next_tag(&value, end).map(|(s, e, n)| (s, e, n.to_string()));
                    continue;
                };
                value = value.replace(&format!("<{rtag}>"), &repl);
                *counts.entry(rtag).or_insert(0) += 1;
                found = next_tag(&value, start).map(|(s, e, n)| (s, e, n.to_string()));
            }
            if value != original {
                if next_tag(&value, 0).is_some() {
                    rep_counts.insert(tag.clone(), counts);
                    repeat = true;
                }
                tags[idx].1 = value.clone();
            }
            if !value.contains('<') {
                done.insert(tag);
            }
        }
        if !repeat {
            return Ok(Ok(()));
        }
    }
}

/// fail2ban's `extractOptions`: `name[k1=v1, k2="v, 2"][k3='v3']`.
pub fn extract_options(option: &str) -> Result<(String, Vec<(String, String)>), String> {
    let Some(open) = option.find('[') else {
        if option.trim().is_empty() {
            return Err("empty name".into());
        }
        return Ok((option.trim().to_string(), Vec::new()));
    };
    let name = option[..open].to_string();
    if name.is_empty() {
        return Err("no name before `[`".into());
    }
    let rest = &option[open + 1..];
    let Some(close) = rest.rfind(']') else {
        return Err(format!("`[` without `]` in `{option}`"));
    };
    if !rest[close + 1..].trim().is_empty() {
        return Err(format!(
            "text after the closing `]`: `{}`",
            rest[close + 1..].trim()
        ));
    }
    let body = &rest[..close];
    let mut opts = Vec::new();
    let b = body.as_bytes();
    let mut pos = 0;
    loop {
        let mut p = pos;
        while p < b.len() && b[p].is_ascii_whitespace() {
            p += 1;
        }
        // `,?\s*$`: the end.
        let mut q = p;
        if q < b.len() && b[q] == b',' {
            q += 1;
        }
        if body[q..].trim().is_empty() {
            break;
        }
        let name_start = p;
        while p < b.len() && (b[p].is_ascii_alphanumeric() || matches!(b[p], b'_' | b'-' | b'.')) {
            p += 1;
        }
        if p == name_start || p >= b.len() || b[p] != b'=' {
            return Err(format!(
                "expected `key=value` at `{}`",
                body[pos..].chars().take(25).collect::<String>().trim()
            ));
        }
        let key = body[name_start..p].to_string();
        p += 1;
        // Quoted first; a quote not followed by a separator is read as a
        // plain value (the regex alternative Python falls back to).
        let terminator = |at: usize| -> Option<usize> {
            if at >= b.len() {
                return Some(at);
            }
            if b[at] == b',' {
                return Some(at + 1);
            }
            if b[at] == b']' {
                let mut k = at + 1;
                while k < b.len() && b[k].is_ascii_whitespace() {
                    k += 1;
                }
                if k < b.len() && b[k] == b'[' {
                    return Some(k + 1);
                }
            }
            None
        };
        let mut parsed = None;
        if p < b.len() && (b[p] == b'"' || b[p] == b'\'') {
            let quote = b[p];
            if let Some(len) = body[p + 1..].find(quote as char) {
                let end = p + 1 + len;
                if let Some(next) = terminator(end + 1) {
                    parsed = Some((body[p + 1..end].to_string(), next));
                }
            }
        }
        let (value, next) = match parsed {
            Some(v) => v,
            None => {
                let end = body[p..].find([',', ']']).map_or(b.len(), |i| p + i);
                match terminator(end) {
                    Some(next) => (body[p..end].to_string(), next),
                    None => {
                        return Err(format!(
                            "unexpected text after option `{key}`: `{}`",
                            body[end..].chars().take(25).collect::<String>()
                        ))
                    }
                }
            }
        };
        opts.retain(|(k, _): &(String, String)| *k != key);
        opts.push((key, value.trim().to_string()));
        pos = next;
        if pos >= b.len() {
            break;
        }
    }
    Ok((name, opts))
}

/// fail2ban's `splitWithOptions`: the actions of an `action` value, each
/// `name` or `name[...]` (the brackets may span lines).
pub fn split_with_options(value: &str) -> Vec<String> {
    let b = value.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'[' {
            i += 1;
        }
        let mut k = i;
        while k < b.len() && b[k].is_ascii_whitespace() {
            k += 1;
        }
        if k < b.len() && b[k] == b'[' {
            // Through the `]` that is not followed by another `[`.
            let mut j = k + 1;
            let mut quote: Option<u8> = None;
            let mut end = None;
            while j < b.len() {
                match (quote, b[j]) {
                    (Some(q), c) if c == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(b[j]),
                    (None, b']') => {
                        let mut n = j + 1;
                        while n < b.len() && b[n].is_ascii_whitespace() {
                            n += 1;
                        }
                        if n < b.len() && b[n] == b'[' {
                            j = n;
                        } else {
                            end = Some(j + 1);
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            i = end.unwrap_or(b.len());
        }
        out.push(value[start..i].trim().to_string());
    }
    out
}

/// fail2ban's `splitwords`: words separated by blanks, commas or newlines.
pub fn split_words(s: &str) -> Vec<String> {
    s.split([' ', ',', '\n'])
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_extracted_with_quotes_and_groups() {
        let (n, o) = extract_options("sshd[mode=aggressive]").unwrap();
        assert_eq!(
            (n.as_str(), o.clone()),
            ("sshd", vec![("mode".into(), "aggressive".into())])
        );
        let (n, o) =
            extract_options(r#"mw[name=sshd, dest="a@b, c", sender='x'][chain=INPUT]"#).unwrap();
        assert_eq!(n, "mw");
        assert_eq!(
            o,
            vec![
                ("name".to_string(), "sshd".to_string()),
                ("dest".into(), "a@b, c".into()),
                ("sender".into(), "x".into()),
                ("chain".into(), "INPUT".into())
            ]
        );
        assert_eq!(extract_options("plain").unwrap(), ("plain".into(), vec![]));
        assert!(extract_options("f[mode]").is_err());
        assert!(extract_options("f[a=1] junk").is_err());
    }

    #[test]
    fn actions_split_across_lines() {
        let v = "iptables[name=a, port=\"1,2\"]\n  sendmail-whois-lines[dest=\"r\", logpath=\"/x\n/y\"]\nplain";
        assert_eq!(
            split_with_options(v),
            vec![
                "iptables[name=a, port=\"1,2\"]".to_string(),
                "sendmail-whois-lines[dest=\"r\", logpath=\"/x\n/y\"]".into(),
                "plain".into()
            ]
        );
    }

    #[test]
    fn tags_substitute_recursively_and_leave_unknown_ones() {
        let mut tags = vec![
            (
                "failregex".to_string(),
                "^<pre> <mdre-<mode>> <HOST>$".to_string(),
            ),
            ("pre".into(), "<a>x".into()),
            ("a".into(), "A".into()),
            ("mode".into(), "extra".into()),
            ("mdre-extra".into(), "E".into()),
        ];
        let mut none = |_: &str| -> Result<Option<String>, ()> { Ok(None) };
        substitute_recursive_tags(&mut tags, &BTreeSet::new(), &mut none)
            .unwrap()
            .unwrap();
        assert_eq!(tags[0].1, "^Ax E <HOST>$");
        let mut selfref = vec![("a".to_string(), "<a>".to_string())];
        assert!(
            substitute_recursive_tags(&mut selfref, &BTreeSet::new(), &mut none)
                .unwrap()
                .is_err()
        );
    }
}
