//! Source lines of addresses from the DWARF line tables (`.debug_line`), for sites whose table
//! records no source location (alternatives). A file built without line tables, or with
//! damaged or compressed ones, simply has none.

use std::collections::HashMap;

use gimli::{AttributeValue, DwarfSections, EndianSlice, LittleEndian};

use super::elf::Image;
use super::statics::Source;

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// The source line of each of `addrs` that the line tables cover, in one pass over them.
pub fn source_lines(image: &Image, addrs: &[u64]) -> HashMap<u64, Source> {
    let mut found = HashMap::new();
    if addrs.is_empty() {
        return found;
    }
    let mut sorted = addrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let sections = DwarfSections::load(|id| {
        let data = image
            .section_named(id.name())
            .and_then(|s| image.section_data(s).ok())
            .unwrap_or(&[]);
        Ok::<_, ()>(data)
    });
    let Ok(sections) = sections else {
        return found;
    };
    let dwarf = sections.borrow(|data| EndianSlice::new(data, LittleEndian));
    let mut units = dwarf.units();
    while let Ok(Some(header)) = units.next() {
        let Ok(unit) = dwarf.unit(header) else {
            continue;
        };
        if let Some(program) = unit.line_program.clone() {
            // Errors end this unit's walk; what it found stands.
            let _ = walk(&dwarf, &unit, program, &sorted, &mut found);
        }
        if found.len() == sorted.len() {
            break;
        }
    }
    found
}

/// Assigns each row's source to the queried addresses in `[row, next row)`.
fn walk<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &gimli::Unit<Slice<'a>>,
    program: gimli::IncompleteLineProgram<Slice<'a>>,
    sorted: &[u64],
    found: &mut HashMap<u64, Source>,
) -> gimli::Result<()> {
    let mut rows = program.rows();
    let mut previous: Option<(u64, u64, u32, u32)> = None;
    while let Some((header, row)) = rows.next_row()? {
        let addr = row.address();
        if let Some((from, file, line, column)) = previous.filter(|p| p.0 < addr) {
            let lo = sorted.partition_point(|&a| a < from);
            let hi = sorted.partition_point(|&a| a < addr);
            for &a in &sorted[lo..hi] {
                if found.contains_key(&a) {
                    continue;
                }
                if let Some(path) = file_path(dwarf, unit, header, file) {
                    found.insert(
                        a,
                        Source {
                            file: path,
                            line,
                            column: (column > 0).then_some(column),
                        },
                    );
                }
            }
        }
        previous = if row.end_sequence() {
            None
        } else {
            let line = row.line().map_or(0, |l| l.get() as u32);
            let column = match row.column() {
                gimli::ColumnType::LeftEdge => 0,
                gimli::ColumnType::Column(c) => c.get() as u32,
            };
            (line > 0).then_some((addr, row.file_index(), line, column))
        };
    }
    Ok(())
}

/// The path of file `index` of the line program, relative to the compilation directory where
/// it lies under it (as the compiler names files in `Location`s).
fn file_path<'a>(
    dwarf: &gimli::Dwarf<Slice<'a>>,
    unit: &gimli::Unit<Slice<'a>>,
    header: &gimli::LineProgramHeader<Slice<'a>>,
    index: u64,
) -> Option<String> {
    let string = |attr: AttributeValue<Slice<'a>>| {
        dwarf
            .attr_string(unit, attr)
            .ok()
            .and_then(|s| s.to_string().ok().map(str::to_owned))
    };
    let file = header.file(index)?;
    let name = string(file.path_name())?;
    let dir = file.directory(header).and_then(string).unwrap_or_default();
    let comp_dir = unit
        .comp_dir
        .and_then(|d| d.to_string().ok().map(str::to_owned))
        .unwrap_or_default();
    let mut path = std::path::PathBuf::from(&comp_dir);
    path.push(dir);
    path.push(name);
    let path = path.to_string_lossy().into_owned();
    let under = comp_dir.trim_end_matches('/');
    Some(match path.strip_prefix(under) {
        Some(rest) if !under.is_empty() && rest.starts_with('/') => rest[1..].to_owned(),
        _ => path,
    })
}
