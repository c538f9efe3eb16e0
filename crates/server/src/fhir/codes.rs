//! The clinical codes the export knows: which LOINC codes are exported as which vital sign and
//! in which UCUM unit, the ISO/IEEE 11073-10101 (MDC) reference identifiers shown next to the
//! numeric codes kiosks declare, and the MDC codes of ECG leads. A value whose LOINC code or
//! unit is not in these tables is skipped (and counted), never guessed.

/// Code system of LOINC.
pub const LOINC: &str = "http://loinc.org";
/// Code system of ISO/IEEE 11073-10101 (MDC).
pub const MDC: &str = "urn:iso:std:iso:11073:10101";
/// Code system of UCUM units.
pub const UCUM: &str = "http://unitsofmeasure.org";
/// Code system of the Observation categories.
pub const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// A vital sign exported as an Observation of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VitalSign {
    /// LOINC code.
    pub loinc: &'static str,
    /// LOINC display.
    pub display: &'static str,
    /// The only UCUM unit accepted for it.
    pub unit: &'static str,
}

/// The vital signs exported one per Observation.
pub const VITALS: [VitalSign; 5] = [
    VitalSign {
        loinc: "59408-5",
        display: "Oxygen saturation in Arterial blood by Pulse oximetry",
        unit: "%",
    },
    VitalSign {
        loinc: "8867-4",
        display: "Heart rate",
        unit: "/min",
    },
    VitalSign {
        loinc: "8310-5",
        display: "Body temperature",
        unit: "Cel",
    },
    VitalSign {
        loinc: "29463-7",
        display: "Body weight",
        unit: "kg",
    },
    VitalSign {
        loinc: "9279-1",
        display: "Respiratory rate",
        unit: "/min",
    },
];

/// The blood pressure panel: one Observation whose components are the pressures.
pub const BP_PANEL: VitalSign = VitalSign {
    loinc: "85354-9",
    display: "Blood pressure panel with all children optional",
    unit: "mm[Hg]",
};

/// The pressures of the panel (systolic and diastolic are required for a panel).
pub const BP_COMPONENTS: [VitalSign; 3] = [
    VitalSign {
        loinc: "8480-6",
        display: "Systolic blood pressure",
        unit: "mm[Hg]",
    },
    VitalSign {
        loinc: "8462-4",
        display: "Diastolic blood pressure",
        unit: "mm[Hg]",
    },
    VitalSign {
        loinc: "8478-0",
        display: "Mean blood pressure",
        unit: "mm[Hg]",
    },
];

/// MDC code of the panel: non-invasive blood pressure.
pub const MDC_BP_PANEL: u32 = 150_020;
/// MDC code of an ECG's electric potential (the excerpt Observation; leads are components).
pub const MDC_ECG: u32 = 131_328;

/// The vital sign of a LOINC code, if exported on its own.
pub fn vital(loinc: &str) -> Option<&'static VitalSign> {
    VITALS.iter().find(|v| v.loinc == loinc)
}

/// The blood pressure component of a LOINC code.
pub fn bp_component(loinc: &str) -> Option<&'static VitalSign> {
    BP_COMPONENTS.iter().find(|v| v.loinc == loinc)
}

/// The MDC reference identifier of a numeric code, when known (display only: an unknown code
/// is still exported as declared, without a display).
pub fn mdc_name(code: u32) -> Option<&'static str> {
    Some(match code {
        150_456 => "MDC_PULS_OXIM_SAT_O2",
        149_530 => "MDC_PULS_OXIM_PULS_RATE",
        149_546 => "MDC_PULS_RATE_NON_INV",
        147_842 => "MDC_ECG_HEART_RATE",
        150_364 => "MDC_TEMP_BODY",
        150_020 => "MDC_PRESS_BLD_NONINV",
        150_021 => "MDC_PRESS_BLD_NONINV_SYS",
        150_022 => "MDC_PRESS_BLD_NONINV_DIA",
        150_023 => "MDC_PRESS_BLD_NONINV_MEAN",
        188_736 => "MDC_MASS_BODY_ACTUAL",
        151_562 => "MDC_RESP_RATE",
        131_328 => "MDC_ECG_ELEC_POTL",
        131_329 => "MDC_ECG_ELEC_POTL_I",
        131_330 => "MDC_ECG_ELEC_POTL_II",
        131_331 => "MDC_ECG_ELEC_POTL_V1",
        131_332 => "MDC_ECG_ELEC_POTL_V2",
        131_333 => "MDC_ECG_ELEC_POTL_V3",
        131_334 => "MDC_ECG_ELEC_POTL_V4",
        131_335 => "MDC_ECG_ELEC_POTL_V5",
        131_336 => "MDC_ECG_ELEC_POTL_V6",
        131_389 => "MDC_ECG_ELEC_POTL_III",
        131_390 => "MDC_ECG_ELEC_POTL_AVR",
        131_391 => "MDC_ECG_ELEC_POTL_AVL",
        131_392 => "MDC_ECG_ELEC_POTL_AVF",
        _ => return None,
    })
}

/// The MDC code of an ECG lead named as kiosks declare them (`I`, `II`, `III`, `aVR`, `aVL`,
/// `aVF`, `V1`…`V6`): `MDC_ECG_ELEC_POTL` plus the lead's number in the MDC lead table.
pub fn ecg_lead(name: &str) -> Option<u32> {
    let lead = match name {
        "I" => 1,
        "II" => 2,
        "V1" => 3,
        "V2" => 4,
        "V3" => 5,
        "V4" => 6,
        "V5" => 7,
        "V6" => 8,
        "III" => 61,
        "aVR" | "AVR" => 62,
        "aVL" | "AVL" => 63,
        "aVF" | "AVF" => 64,
        _ => return None,
    };
    Some(MDC_ECG + lead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_codes_match_the_simulated_kiosks_declarations() {
        // crates/kiosk/src/devices/codes.rs declares these.
        assert_eq!(ecg_lead("I"), Some(131_329));
        assert_eq!(ecg_lead("II"), Some(131_330));
        assert_eq!(ecg_lead("III"), Some(131_389));
        assert_eq!(ecg_lead("PLETH"), None);
        for code in [
            131_329, 131_330, 131_389, 150_456, 149_530, 150_364, 188_736,
        ] {
            assert!(mdc_name(code).is_some(), "{code}");
        }
        assert_eq!(vital("59408-5").map(|v| v.unit), Some("%"));
        assert_eq!(vital("8480-6"), None);
        assert_eq!(bp_component("8462-4").map(|v| v.unit), Some("mm[Hg]"));
    }
}
