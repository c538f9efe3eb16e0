//! The subject of an export: a reference to the patient that the platform supplies (with the
//! walk-in ticket or the doctor's request). Cabine never makes one up; it only checks that what
//! it is given is a FHIR reference to a Patient.

/// A checked reference to a Patient: `Patient/<id>` or an absolute `http(s)://…/Patient/<id>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Subject(String);

/// Why a subject reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// Not a reference to a Patient.
    #[error(
        "subject must be a reference to a Patient, `Patient/<id>` or \
         `https://<fhir base>/Patient/<id>`, where <id> is 1-64 of [A-Za-z0-9.-]"
    )]
    NotAPatient,
}

impl Subject {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<Subject, SubjectError> {
        let s = s.trim();
        let relative = if let Some(rest) = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
        {
            // An absolute reference: a FHIR base, then `Patient/<id>`.
            let i = rest.find("/Patient/").ok_or(SubjectError::NotAPatient)?;
            let host = &rest[..i];
            if host.is_empty()
                || host
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '?' | '#' | '@' | '"' | '\\'))
            {
                return Err(SubjectError::NotAPatient);
            }
            &rest[i + 1..]
        } else {
            s
        };
        let id = relative
            .strip_prefix("Patient/")
            .ok_or(SubjectError::NotAPatient)?;
        let id_ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !id_ok {
            return Err(SubjectError::NotAPatient);
        }
        Ok(Subject(s.to_owned()))
    }

    /// The reference, as it goes into `Observation.subject.reference`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Subject {
    /// Hidden: a patient reference is an identifier of a person.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subject(<hidden>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_patient_references() {
        assert_eq!(
            Subject::parse("Patient/123").unwrap().as_str(),
            "Patient/123"
        );
        assert!(Subject::parse("https://fhir.example.fr/r4/Patient/a-b.c").is_ok());
        for bad in [
            "",
            "123",
            "Patient/",
            "Practitioner/1",
            "Patient/1/_history/2",
            "Patient/a b",
            "https:///Patient/1",
            "https://x?y/Patient/1",
            "ftp://x/Patient/1",
        ] {
            assert_eq!(
                Subject::parse(bad),
                Err(SubjectError::NotAPatient),
                "{bad:?}"
            );
        }
        assert!(!format!("{:?}", Subject::parse("Patient/123").unwrap()).contains("123"));
    }
}
