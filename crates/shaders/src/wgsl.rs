//! Assembling WGSL sources: `#import name` lines, and declarations generated from the Rust
//! types and constants the host shares with the shaders.
//!
//! A shader file starts with the modules it needs, one `#import name` line each (as in
//! vello). A module is either a file under `shader/shared/` or text generated here from
//! Rust (a `#[repr(C)]` struct declared with [`shader_struct!`], a constant group declared
//! with [`shader_consts!`], tiling constants). Imports nest; each module is included once.
use std::collections::HashSet;

/// A `#[repr(C)]` struct whose WGSL declaration is generated from its Rust definition.
pub trait WgslStruct: bytemuck::Pod {
    /// `struct Name { field: type, ... }` in WGSL.
    const WGSL: &'static str;
}

/// Declares a `#[repr(C)]`, `Pod` struct of `u32`/`i32`/`f32` fields once, in Rust, and
/// generates its WGSL declaration ([`WgslStruct::WGSL`]) from the same field list, so the
/// host and the shaders cannot disagree on a field's place.
macro_rules! shader_struct {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : $ty:ident,)* }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fm])* pub $field: $ty,)*
        }
        impl $crate::wgsl::WgslStruct for $name {
            const WGSL: &'static str = concat!(
                "struct ", stringify!($name), " {\n",
                $("    ", stringify!($field), ": ", stringify!($ty), ",\n",)*
                "}\n"
            );
        }
    };
}
pub(crate) use shader_struct;

/// Declares `u32` constants once, in Rust, and a group listing them (`$group`), from which
/// [`consts_wgsl`] writes the same constants in WGSL.
macro_rules! shader_consts {
    ($(#[$gm:meta])* $group:ident { $($(#[$m:meta])* $name:ident = $value:expr;)* }) => {
        $($(#[$m])* pub const $name: u32 = $value;)*
        $(#[$gm])*
        pub const $group: &[(&str, u32)] = &[$((stringify!($name), $name),)*];
    };
}
pub(crate) use shader_consts;

/// WGSL declarations of a constant group (see [`shader_consts!`]).
pub fn consts_wgsl(group: &[(&str, u32)]) -> String {
    group.iter().map(|(name, value)| format!("const {name}: u32 = {value}u;\n")).collect()
}

/// The files under `shader/shared/`, by module name.
pub fn shared_module(name: &str) -> Option<&'static str> {
    Some(match name {
        "glm_bindings" => include_str!("../shader/shared/glm_bindings.wgsl"),
        "keys" => include_str!("../shader/shared/keys.wgsl"),
        "statistic" => include_str!("../shader/shared/statistic.wgsl"),
        _ => return None,
    })
}

/// `main` with every `#import name` line replaced by the module's text (nested imports
/// resolved, each module once, in order of first import). `generated` gives the modules
/// written from Rust; the rest come from `shared/`. An unknown module is a defect of the
/// sources themselves (every variant is assembled and validated by the crate's tests).
pub fn assemble(main: &str, generated: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut seen = HashSet::new();
    include(main, generated, &mut seen, &mut out);
    out
}

fn include(text: &str, generated: &dyn Fn(&str) -> Option<String>, seen: &mut HashSet<String>, out: &mut String) {
    for line in text.lines() {
        match line.trim().strip_prefix("#import ") {
            Some(name) => {
                let name = name.trim();
                if !seen.insert(name.to_string()) {
                    continue;
                }
                let module = generated(name)
                    .or_else(|| shared_module(name).map(str::to_string))
                    .unwrap_or_else(|| panic!("WGSL: #import {name}: no such module"));
                include(&module, generated, seen, out);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    shader_struct! {
        /// A test struct.
        pub struct Demo {
            pub a: u32,
            pub b: f32,
        }
    }

    shader_consts! {
        DEMO_CONSTS {
            ONE = 1;
            SHIFTED = 1 << 4;
        }
    }

    #[test]
    fn generated_declarations_and_nested_imports() {
        assert_eq!(Demo::WGSL, "struct Demo {\n    a: u32,\n    b: f32,\n}\n");
        assert_eq!(consts_wgsl(DEMO_CONSTS), "const ONE: u32 = 1u;\nconst SHIFTED: u32 = 16u;\n");
        assert_eq!(SHIFTED, 16);
        let gen = |name: &str| match name {
            "a" => Some("#import b\nA\n".to_string()),
            "b" => Some("B\n".to_string()),
            _ => None,
        };
        assert_eq!(assemble("#import a\n#import b\n  #import a\nmain", &gen), "B\nA\nmain\n");
        assert!(assemble("#import keys\n", &gen).contains("fn key_of("));
    }

    #[test]
    #[should_panic(expected = "no such module")]
    fn unknown_imports_are_refused() {
        assemble("#import nope\n", &|_| None);
    }
}
