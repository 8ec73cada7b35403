//! Compiling a filter: each failregex, ignoreregex and the prefregex
//! expanded (tags), parsed once, and built in the `regex` crate's engines
//! (or fancy-regex behind a superset); then the combined first-match DFA,
//! the split plans and the literal prefilter of a [`FilterSet`].

use super::*;

impl Prefix {
    fn compile(pattern: &str, limit_hits: &Arc<AtomicU64>) -> Result<Prefix, FilterError> {
        let place = "prefregex";
        let exp = host::expand_prefix(pattern, place)?;
        let c = build(exp, place, meta::Config::new(), limit_hits)?;
        let (hosts, fields) = c.tag_groups();
        let content = c.exp.content.as_deref().map(|n| c.group_index(n));
        let slots = 2 * match &c.fancy {
            Some(f) => f.group_count(),
            None => c.regex.group_info().group_len(PatternID::ZERO),
        };
        // Its spans from DFA passes, as for a failregex: the backtracker
        // over a whole line (the content runs to its end) cost more than
        // the rest of matching it.
        let walk = (c.fancy.is_none() && anchored_at_start(&c.hir))
            .then(|| {
                let groups: Vec<usize> = hosts
                    .iter()
                    .map(|h| h.0)
                    .chain(fields.all())
                    .chain(content)
                    .collect();
                let plan = SplitPlan::new(&c.hir, &groups)?;
                Some((ForwardDfa::many(std::slice::from_ref(&c.hir))?, plan))
            })
            .flatten();
        Ok(Prefix {
            regex: c.regex,
            walk,
            fancy: c.fancy,
            content,
            hosts,
            fields,
            slots,
        })
    }
}

/// A failregex or ignoreregex, tags expanded, parsed once for all its uses.
struct Compiled {
    regex: meta::Regex,
    /// Its pattern is the superset when `fancy` is set.
    exp: host::Expanded,
    /// The parsed pattern (the superset's when `fancy` is set).
    hir: Hir,
    fancy: Option<Fancy>,
}

impl Compiled {
    /// Index of the tag group `name` in whichever engine runs the regex.
    fn group_index(&self, name: &str) -> usize {
        match &self.fancy {
            Some(f) => f.group_index(name),
            None => self.regex.group_info().to_index(PatternID::ZERO, name),
        }
        .expect("tag group exists")
    }

    /// (group, kind) of each host tag, and the groups of the other tags.
    fn tag_groups(&self) -> (Vec<(usize, HostKind)>, FieldGroups) {
        let hosts = self
            .exp
            .hosts
            .iter()
            .map(|(n, k)| (self.group_index(n), *k))
            .collect();
        let groups = |names: &[String]| names.iter().map(|n| self.group_index(n)).collect();
        let fields = FieldGroups {
            users: groups(&self.exp.users),
            alt_users: groups(&self.exp.alt_users),
            marks: self
                .exp
                .marks
                .iter()
                .map(|(n, m)| (self.group_index(n), *m))
                .collect(),
        };
        (hosts, fields)
    }

    fn has_id(&self) -> bool {
        self.exp.marks.iter().any(|m| m.1 == Mark::Id)
    }
}

fn compile_one(
    pattern: &str,
    place: &str,
    limit_hits: &Arc<AtomicU64>,
) -> Result<Compiled, FilterError> {
    let exp = host::expand(pattern, place)?;
    // The combined search finds the matches; this one resolves groups only.
    let config = meta::Config::new().hybrid(false).dfa(false);
    build(exp, place, config, limit_hits)
}

/// Builds `exp` in the regex crate, or when that lacks what it needs, in
/// the backtracker behind a superset ([`fancy`]).
fn build(
    mut exp: host::Expanded,
    place: &str,
    config: meta::Config,
    limit_hits: &Arc<AtomicU64>,
) -> Result<Compiled, FilterError> {
    let build_meta = |p: &str| {
        regex_automata::util::syntax::parse(p)
            .map_err(|e| e.to_string())
            .and_then(|hir| {
                meta::Regex::builder()
                    .configure(config.clone())
                    .build_from_hir(&hir)
                    .map(|regex| (regex, hir))
                    .map_err(|e| e.to_string())
            })
    };
    let e = match build_meta(&exp.pattern) {
        Ok((regex, hir)) => {
            return Ok(Compiled {
                regex,
                exp,
                hir,
                fancy: None,
            })
        }
        Err(e) => e,
    };
    if let Ok(f) = Fancy::new(&exp.pattern, limit_hits.clone()) {
        let sup = fancy::superset(&exp.pattern);
        if let Ok((regex, hir)) = build_meta(&sup) {
            exp.pattern = sup;
            return Ok(Compiled {
                regex,
                exp,
                hir,
                fancy: Some(f),
            });
        }
    }
    // The regex crate words syntax errors best (with a caret).
    Err(FilterError::BadRegex {
        place: place.to_string(),
        expanded: exp.pattern.clone(),
        reason: match regex::Regex::new(&exp.pattern) {
            Err(re) => re.to_string(),
            Ok(_) => e,
        },
    })
}

impl FilterSet {
    /// Compiles a failregex/ignoreregex list. Every failregex needs a host
    /// tag; ignoreregexes may use tags too (their captures are unused).
    pub fn compile(
        failregex: &[String],
        ignoreregex: &[String],
        datepattern: Option<&str>,
    ) -> Result<FilterSet, FilterError> {
        FilterSet::compile_prefixed(None, failregex, ignoreregex, datepattern)
    }

    /// [`FilterSet::compile_prefixed`] with xban's date cut.
    pub fn compile_prefixed(
        prefregex: Option<&str>,
        failregex: &[String],
        ignoreregex: &[String],
        datepattern: Option<&str>,
    ) -> Result<FilterSet, FilterError> {
        FilterSet::compile_cut(
            prefregex,
            failregex,
            ignoreregex,
            datepattern,
            DateCut::Leading,
        )
    }

    /// [`FilterSet::compile`] behind a `prefregex` ([`FilterDef::prefregex`]):
    /// a failregex may then leave the host to the prefregex's `<HOST>`;
    /// `date_cut` decides what of a line's date is cut ([`DateCut`]).
    pub fn compile_cut(
        prefregex: Option<&str>,
        failregex: &[String],
        ignoreregex: &[String],
        datepattern: Option<&str>,
        date_cut: DateCut,
    ) -> Result<FilterSet, FilterError> {
        if failregex.is_empty() {
            return Err(FilterError::NoFailregex);
        }
        let limit_hits = Arc::new(AtomicU64::new(0));
        let prefix = prefregex
            .map(|p| Prefix::compile(p, &limit_hits))
            .transpose()?;
        let prefix_has_host = prefix.as_ref().is_some_and(|p| !p.hosts.is_empty());
        let mut compiled = Vec::with_capacity(failregex.len());
        for (i, src) in failregex.iter().enumerate() {
            compiled.push(compile_one(src, &format!("failregex[{i}]"), &limit_hits)?);
        }
        // With <F-MLFID>, a line may leave the host to its connection: the
        // prefregex's, or the failregex's own (a failregex with neither a
        // host nor a connection could never name anyone).
        let prefix_has_id = prefix
            .as_ref()
            .is_some_and(|p| p.fields.marks.iter().any(|m| m.1 == Mark::Id));
        let connections = prefix_has_id || compiled.iter().any(Compiled::has_id);
        let mut fails = Vec::with_capacity(failregex.len());
        let mut expanded = Vec::with_capacity(failregex.len());
        let mut hirs = Vec::with_capacity(failregex.len());
        for (i, c) in compiled.into_iter().enumerate() {
            if c.exp.hosts.is_empty() && !prefix_has_host && !prefix_has_id && !c.has_id() {
                return Err(FilterError::NoHostTag {
                    place: format!("failregex[{i}]"),
                });
            }
            let (hosts, fields) = c.tag_groups();
            let Compiled {
                regex,
                exp,
                hir,
                fancy,
            } = c;
            let top = hosts
                .iter()
                .map(|h| h.0)
                .max()
                .unwrap_or(0)
                .max(fields.top());
            fails.push(FailRegex {
                regex,
                hosts,
                fields,
                host_optional: connections,
                slots: 2 * (top + 1),
                hir: hir.clone(),
                split: OnceLock::new(),
                fancy,
            });
            expanded.push(exp.pattern);
            hirs.push(hir);
        }
        let mut ignore_expanded = Vec::with_capacity(ignoreregex.len());
        let mut ignore_fancy = Vec::with_capacity(ignoreregex.len());
        for (i, src) in ignoreregex.iter().enumerate() {
            let c = compile_one(src, &format!("ignoreregex[{i}]"), &limit_hits)?;
            ignore_expanded.push(c.exp.pattern);
            ignore_fancy.push(c.fancy);
        }
        let ignore_set = if ignore_expanded.is_empty() {
            None
        } else {
            Some(
                RegexSet::new(&ignore_expanded).map_err(|e| FilterError::BadRegex {
                    place: "ignoreregex (combined set)".to_string(),
                    expanded: "all ignoreregexes".to_string(),
                    reason: e.to_string(),
                })?,
            )
        };
        let datepattern = match date_cut {
            DateCut::Leading => datepattern.map(DatePattern::parse).transpose()?,
            DateCut::Anywhere => Some(match datepattern {
                Some(d) => DatePattern::parse_fail2ban(d)?,
                None => DatePattern::fail2ban_default(),
            }),
        };
        let first = if hirs.iter().all(anchored_at_start) {
            ForwardDfa::many(&hirs)
        } else {
            None
        };
        let fail_set = OnceLock::new();
        if first.is_none() {
            // Every line takes the general path: build the set now, and
            // report a set that does not build.
            let set = RegexSet::new(&expanded).map_err(|e| FilterError::BadRegex {
                place: "failregex (combined set)".to_string(),
                expanded: "all failregexes".to_string(),
                reason: e.to_string(),
            })?;
            let _ = fail_set.set(Some(set));
        }
        Ok(FilterSet {
            max_lines: 1,
            first,
            prefilter: Prefilter::from_hirs(&hirs),
            gauge: PrefilterGauge::default(),
            connections,
            fail_set,
            expanded,
            fails,
            ignore_set,
            ignore_fancy,
            limit_hits,
            datepattern,
            date_cut,
            sources: failregex.to_vec(),
            ignore_whole_line: prefix.is_some() && ignoreregex.len() + 2 < failregex.len(),
            prefix,
        })
    }

    /// Compiles a definition with its base lists plus those of `mode`
    /// (or `default_mode` when `mode` is `None`).
    pub fn from_def(def: &FilterDef, mode: Option<&str>) -> Result<FilterSet, FilterError> {
        let (fail, ignore) = def.lists(mode)?;
        let place = mode.or(def.default_mode.as_deref());
        FilterSet::compile_def(def, &fail, &ignore).map_err(|e| match place {
            Some(m) => FilterError::InMode {
                place: format!("mode {m:?}"),
                source: Box::new(e),
            },
            None => e,
        })
    }
}

impl FilterSet {
    /// `def`'s prefregex, date and `maxlines` around the lists `fail` and
    /// `ignore` (its own, or with a mode's or the command line's added).
    pub(crate) fn compile_def(
        def: &FilterDef,
        fail: &[String],
        ignore: &[String],
    ) -> Result<FilterSet, FilterError> {
        let max_lines = def.maxlines.unwrap_or(1);
        if max_lines == 0 || max_lines > lines::MAX_LINES {
            return Err(FilterError::MaxLines {
                value: max_lines,
                max: lines::MAX_LINES,
            });
        }
        if max_lines == 1 {
            return FilterSet::compile_cut(
                def.prefregex.as_deref(),
                fail,
                ignore,
                def.datepattern.as_deref(),
                def.date_cut,
            );
        }
        if def.prefregex.is_some() {
            return Err(FilterError::MaxLinesPrefregex { value: max_lines });
        }
        // fail2ban compiles failregexes (not ignoreregexes) in multi-line
        // mode when maxlines is above 1.
        let multi: Vec<String> = fail.iter().map(|f| format!("(?m:{f})")).collect();
        let mut set = FilterSet::compile_cut(
            None,
            &multi,
            ignore,
            def.datepattern.as_deref(),
            def.date_cut,
        )?;
        set.sources = fail.to_vec();
        set.max_lines = max_lines;
        Ok(set)
    }
}

/// Whether every match of `hir` starts at the start of the text (`^`
/// without multi-line mode, on every branch).
fn anchored_at_start(hir: &Hir) -> bool {
    hir.properties()
        .look_set_prefix()
        .contains(regex_syntax::hir::Look::Start)
}
