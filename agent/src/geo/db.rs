//! Reading MaxMind DB files: opening and checking them, their identity
//! (to notice a new version), and what they say of one address.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader};
use serde::{Deserialize, Serialize};

use super::GeoConfig;
use crate::validation::{invalid, ValidationError};

/// File identity and size: any change means "read it again".
pub type Stamp = Option<(std::time::SystemTime, u64, u64)>;

pub(super) fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// One opened database file.
pub struct GeoFile {
    pub path: PathBuf,
    pub(super) reader: Reader<Vec<u8>>,
    stamp: Stamp,
}

impl std::fmt::Debug for GeoFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoFile").field("path", &self.path).finish()
    }
}

impl GeoFile {
    pub fn open(key: &str, path: &Path) -> Result<GeoFile, ValidationError> {
        let st = stamp(path);
        let bytes = std::fs::read(path).map_err(|e| {
            invalid(
                key,
                format!(
                    "cannot read {}: {e} (install the database there, e.g. with geoipupdate, or fix the path)",
                    path.display()
                ),
            )
        })?;
        let reader = Reader::from_source(bytes).map_err(|e| {
            invalid(
                key,
                format!(
                    "{} is not a readable MaxMind DB file ({e}): truncated or corrupt? Download it again",
                    path.display()
                ),
            )
        })?;
        Ok(GeoFile {
            path: path.to_path_buf(),
            reader,
            stamp: st,
        })
    }

    pub fn changed(&self) -> bool {
        stamp(&self.path) != self.stamp
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

/// The opened databases.
#[derive(Debug, Default)]
pub struct GeoDb {
    pub country: Option<GeoFile>,
    pub asn: Option<GeoFile>,
}

/// What the database says of one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeoInfo {
    pub address: String,
    pub country: Option<String>,
    pub country_name: Option<String>,
    pub asn: Option<u32>,
    pub asn_org: Option<String>,
    /// The database network the country (or ASN) answer is for.
    pub network: Option<String>,
    /// The rule covering the address, if any.
    pub rule: Option<String>,
    /// The compiled prefix covering it.
    pub prefix: Option<String>,
    /// An allowlist entry that lets it through anyway.
    pub allowlisted_by: Option<String>,
}

impl GeoDb {
    pub fn open(cfg: &GeoConfig) -> Result<GeoDb, ValidationError> {
        Ok(GeoDb {
            country: cfg
                .database
                .as_deref()
                .map(|p| GeoFile::open("geo.database", p))
                .transpose()?,
            asn: cfg
                .asn_database
                .as_deref()
                .map(|p| GeoFile::open("geo.asn_database", p))
                .transpose()?,
        })
    }

    pub fn changed(&self) -> bool {
        self.country.as_ref().is_some_and(GeoFile::changed)
            || self.asn.as_ref().is_some_and(GeoFile::changed)
    }

    pub fn country_of(&self, ip: IpAddr) -> Option<String> {
        let f = self.country.as_ref()?;
        let r = f.reader.lookup(ip).ok()?;
        r.decode_path::<String>(&[PathElement::Key("country"), PathElement::Key("iso_code")])
            .ok()
            .flatten()
    }

    pub fn info(&self, ip: IpAddr) -> GeoInfo {
        let mut out = GeoInfo {
            address: ip.to_string(),
            ..Default::default()
        };
        if let Some(f) = &self.country {
            if let Ok(r) = f.reader.lookup(ip) {
                if r.has_data() {
                    out.network = r.network().ok().map(|n| n.to_string());
                }
                out.country = r
                    .decode_path(&[PathElement::Key("country"), PathElement::Key("iso_code")])
                    .ok()
                    .flatten();
                out.country_name = r
                    .decode_path(&[
                        PathElement::Key("country"),
                        PathElement::Key("names"),
                        PathElement::Key("en"),
                    ])
                    .ok()
                    .flatten();
            }
        }
        if let Some(f) = &self.asn {
            if let Ok(r) = f.reader.lookup(ip) {
                if out.network.is_none() && r.has_data() {
                    out.network = r.network().ok().map(|n| n.to_string());
                }
                out.asn = r
                    .decode_path(&[PathElement::Key("autonomous_system_number")])
                    .ok()
                    .flatten();
                out.asn_org = r
                    .decode_path(&[PathElement::Key("autonomous_system_organization")])
                    .ok()
                    .flatten();
            }
        }
        out
    }
}
