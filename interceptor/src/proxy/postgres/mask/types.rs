//! What the masking code knows about PostgreSQL types: built-in OIDs
//! (pg_type.dat) sorted into classes by how their values can carry free
//! text. Types with OIDs assigned at run time (enums, composites, domains,
//! extension types such as citext or hstore) are [`Class::Unknown`].

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const JSON: u32 = 114;
pub const XML: u32 = 142;
pub const PG_NODE_TREE: u32 = 194;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const MONEY: u32 = 790;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const NUMERIC: u32 = 1700;
pub const REFCURSOR: u32 = 1790;
pub const RECORD: u32 = 2249;
pub const CSTRING: u32 = 2275;
pub const JSONB: u32 = 3802;

/// How values of a type are masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A string: UTF-8 (client encoding) bytes in text and binary format.
    Text {
        /// json: a masked value is the JSON string `"****"`.
        json: bool,
        /// `"char"`: one byte, so a masked value is `*`.
        one_byte: bool,
    },
    /// jsonb: JSON text; in binary a version byte (1) comes first.
    Jsonb,
    /// A number: masked text `0`, masked binary `len` zero bytes (which is
    /// zero for every one of these types, numeric included: no digits,
    /// weight 0, sign +, scale 0). Detectors never look at numbers.
    Number { binary_len: u8 },
    /// bytea: raw bytes in binary, `\x…` hex or escape format in text.
    Bytea,
    /// A type whose values hold no free text (dates, uuids, geometry, …).
    Opaque,
    /// An array of a built-in element type (text and binary formats).
    Array { elem: u32 },
    /// An anonymous record (`ROW(…)`): fields carry their own OIDs in
    /// binary; unknown in text.
    Record,
    /// Anything else.
    Unknown,
}

pub fn class(oid: u32) -> Class {
    match oid {
        TEXT | VARCHAR | BPCHAR | NAME | XML | UNKNOWN | REFCURSOR | CSTRING | PG_NODE_TREE => {
            Class::Text {
                json: false,
                one_byte: false,
            }
        }
        CHAR => Class::Text {
            json: false,
            one_byte: true,
        },
        JSON => Class::Text {
            json: true,
            one_byte: false,
        },
        JSONB => Class::Jsonb,
        INT2 => Class::Number { binary_len: 2 },
        INT4 | OID | FLOAT4 => Class::Number { binary_len: 4 },
        INT8 | FLOAT8 | MONEY | NUMERIC => Class::Number { binary_len: 8 },
        BYTEA => Class::Bytea,
        BOOL
        // date, time, timestamp, timestamptz, interval, timetz
        | 1082 | 1083 | 1114 | 1184 | 1186 | 1266
        // uuid, inet, cidr, macaddr, macaddr8
        | 2950 | 869 | 650 | 829 | 774
        // bit, varbit, point, lseg, path, box, polygon, line, circle
        | 1560 | 1562 | 600 | 601 | 602 | 603 | 604 | 628 | 718
        // pg_lsn, xid, xid8, tid, cid, int2vector, oidvector
        | 3220 | 28 | 5069 | 27 | 29 | 22 | 30
        // regproc, regprocedure, regoper, regoperator, regclass, regtype,
        // regcollation, regrole, regnamespace, regconfig, regdictionary
        | 24 | 2202 | 2203 | 2204 | 2205 | 2206 | 4191 | 4096 | 4089 | 3734 | 3769 => {
            Class::Opaque
        }
        RECORD => Class::Record,
        _ => match array_elem(oid) {
            Some(elem) => Class::Array { elem },
            None => Class::Unknown,
        },
    }
}

/// The element type of a built-in array type whose text form uses `,`
/// between elements (so not box[], whose delimiter is `;`).
pub fn array_elem(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => BOOL,
        1001 => BYTEA,
        1002 => CHAR,
        1003 => NAME,
        1005 => INT2,
        1007 => INT4,
        1009 => TEXT,
        1014 => BPCHAR,
        1015 => VARCHAR,
        1016 => INT8,
        1021 => FLOAT4,
        1022 => FLOAT8,
        1028 => OID,
        1231 => NUMERIC,
        143 => XML,
        199 => JSON,
        791 => MONEY,
        2201 => REFCURSOR,
        2287 => RECORD,
        3807 => JSONB,
        1182 => 1082,
        1183 => 1083,
        1115 => 1114,
        1185 => 1184,
        1187 => 1186,
        1270 => 1266,
        2951 => 2950,
        1041 => 869,
        651 => 650,
        1040 => 829,
        775 => 774,
        1561 => 1560,
        1563 => 1562,
        _ => return None,
    })
}

impl Class {
    /// Whether a value of this class can hold text the detectors should
    /// see. (Arrays: whether their elements can.)
    pub fn may_hold_text(self) -> bool {
        match self {
            Class::Number { .. } | Class::Opaque => false,
            Class::Array { elem } => class(elem).may_hold_text(),
            _ => true,
        }
    }
}
