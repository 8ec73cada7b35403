//! Operator diagnostics: the error type, and from a failed command's error
//! text the reason in words and the likely fix.

#[derive(Debug, thiserror::Error)]
pub enum SteeringError {
    #[error("invalid config: {0}")]
    Config(String),
    #[error("{program} not installed (needed for tarpit steering): {hint}")]
    NotInstalled { program: String, hint: String },
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}; fix: {fix}")]
    Command {
        command: String,
        stderr: String,
        fix: String,
    },
    #[error("{message}, and the fallback target `{spec}` does not work either ({family}: {stderr}); fix tarpit.fallback or set it to \"drop\"")]
    SubstituteUnavailable {
        message: String,
        spec: String,
        family: &'static str,
        stderr: String,
    },
    #[error("ipset `{set}` exists as `{found}`, not hash:net family {family} without timeout; fix: remove it (`xban` teardown or `ipset destroy {set}`) or choose another tarpit.set_* name")]
    SetMismatch {
        set: String,
        found: String,
        family: &'static str,
    },
    #[error("cannot steer {target}: {reason}")]
    Unsupported { target: String, reason: String },
    #[error("`{command}` printed `{line}`, which is not an address")]
    Parse { command: String, line: String },
}

/// The operator-facing reason a target spec failed the probe.
pub(super) fn unavailable_message(spec: &str, family: &str, stderr: &str) -> String {
    let name = spec.split_whitespace().next().unwrap_or(spec);
    let said = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Try `"))
        .collect::<Vec<_>>()
        .join(" / ");
    let extension_missing = stderr.contains("Couldn't load target")
        || stderr.contains(&format!("Chain '{name}' does not exist"));
    let kernel_missing = stderr.contains("missing kernel module")
        || stderr.contains("RULE_APPEND failed (No such file or directory)")
        || stderr.contains("No chain/target/match by that name");
    if name == "TARPIT" && (extension_missing || kernel_missing) {
        let also = if extension_missing {
            ", which also brings the missing iptables extension libxt_TARPIT.so"
        } else {
            ""
        };
        format!(
            "the TARPIT target is not available (kernel module xt_TARPIT missing: install xtables-addons-dkms{also}); {family} iptables said: {said}"
        )
    } else {
        format!("the {name} target is not available; {family} iptables said: {said}")
    }
}

pub(super) fn not_installed(program: &str) -> SteeringError {
    let base = program.rsplit('/').next().unwrap_or(program);
    let hint = if base.starts_with("iptables") || base.starts_with("ip6tables") {
        "apt-get install iptables (it has iptables-legacy and ip6tables too), or fix tarpit.iptables / tarpit.ip6tables"
            .to_string()
    } else if base.starts_with("ipset") {
        "apt-get install ipset, or fix tarpit.ipset".to_string()
    } else if base == "ip" {
        "apt-get install iproute2".to_string()
    } else {
        format!("install {base} or fix its name in [tarpit]")
    };
    SteeringError::NotInstalled {
        program: program.to_string(),
        hint,
    }
}

/// The likely fix for a failed command, from its error text.
pub(super) fn fix_for(program: &str, stderr: &str) -> String {
    let has = |s: &str| stderr.contains(s);
    let fix = if has("Permission denied") || has("Operation not permitted") || has("must be root") {
        "run xban as root (it needs CAP_NET_ADMIN)"
    } else if has("xtables lock") {
        "another program held the xtables lock for over 10 s; retry"
    } else if has("Hash is full") {
        "the set is full (an older set with a smaller maxelem?); run xban's tarpit teardown and restart to recreate it with maxelem 1048576"
    } else if has("Set cannot be created") {
        "a set of that name exists with other parameters; destroy it or choose another tarpit.set_* name"
    } else if has("in use by a kernel component") {
        "the set is still referenced by an iptables rule; delete that rule first"
    } else if has("match `set'") || has("Couldn't load match") {
        "iptables lacks the set match (xt_set): install the iptables package's extensions and a kernel with CONFIG_NETFILTER_XT_SET"
    } else if has("Kernel error received") || has("Cannot open session to kernel") {
        "the kernel lacks ip_set or hash:net (CONFIG_IP_SET_HASH_NET, modprobe ip_set_hash_net)"
    } else if has("can't initialize")
        || has("Table does not exist")
        || has("does not exist (do you need to insmod?)")
    {
        "the kernel lacks this iptables backend or table; try the other backend (tarpit.iptables = \"iptables-legacy\" or \"iptables-nft\", same for ip6tables)"
    } else if has("incompatible, use 'nft' tool") {
        "the table holds nftables rules iptables cannot read; use tarpit.iptables = \"iptables-legacy\" or fix the table with nft"
    } else if has("Cannot open network namespace") {
        "the network namespace does not exist"
    } else if program.contains("ipset") {
        "check the ipset error above"
    } else {
        "check the iptables error above"
    };
    fix.to_string()
}
