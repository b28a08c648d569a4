//! One hour's restored lines put in time order and printed once each, in
//! bounded memory.
//!
//! Lines are held up to a budget; past it they are sorted and spilled to an
//! anonymous temporary file as a run, and the runs are merged at the end. The
//! order is `(_ts, _id, object, position)`: copies of a line (same ID, hence the
//! same `_ts`) meet side by side, and the first, from the earliest part, is the
//! one printed. Lines of an object that later turned out corrupt are left out
//! at the end, so an object is restored whole or not at all.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};

/// A line kept for printing, with what it is sorted by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kept {
    pub ts: i64,
    /// Empty when the line has none; such lines are never deduplicated.
    pub id: Box<str>,
    /// The object's place in the restore, for leaving out objects that failed.
    pub object: u32,
    /// The line's place in its object.
    pub position: u64,
    pub text: Box<str>,
}

impl Kept {
    fn weight(&self) -> usize {
        self.text.len() + self.id.len() + 64
    }

    fn write_to(&self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.ts.to_le_bytes())?;
        out.write_all(&self.object.to_le_bytes())?;
        out.write_all(&self.position.to_le_bytes())?;
        for field in [&self.id, &self.text] {
            out.write_all(&(field.len() as u64).to_le_bytes())?;
            out.write_all(field.as_bytes())?;
        }
        Ok(())
    }

    /// The next record of a run, `None` at its end.
    fn read_from(input: &mut impl Read) -> io::Result<Option<Self>> {
        let mut ts = [0u8; 8];
        match input.read_exact(&mut ts) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            other => other?,
        }
        let mut object = [0u8; 4];
        input.read_exact(&mut object)?;
        let mut position = [0u8; 8];
        input.read_exact(&mut position)?;
        let mut text_field = || -> io::Result<Box<str>> {
            let mut len = [0u8; 8];
            input.read_exact(&mut len)?;
            let mut bytes = vec![0u8; u64::from_le_bytes(len) as usize];
            input.read_exact(&mut bytes)?;
            String::from_utf8(bytes)
                .map(String::into_boxed_str)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        let id = text_field()?;
        let text = text_field()?;
        Ok(Some(Self {
            ts: i64::from_le_bytes(ts),
            id,
            object: u32::from_le_bytes(object),
            position: u64::from_le_bytes(position),
            text,
        }))
    }
}

/// What printing an hour did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Printed {
    pub lines: u64,
    pub duplicates: u64,
}

pub struct HourSorter {
    budget: usize,
    held: Vec<Kept>,
    held_weight: usize,
    runs: Vec<File>,
}

impl HourSorter {
    /// Holds up to about `budget` bytes of lines in memory.
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            held: Vec::new(),
            held_weight: 0,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, line: Kept) -> io::Result<()> {
        self.held_weight += line.weight();
        self.held.push(line);
        if self.held_weight >= self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> io::Result<()> {
        self.held.sort_unstable();
        let mut run = BufWriter::new(tempfile::tempfile()?);
        for line in self.held.drain(..) {
            line.write_to(&mut run)?;
        }
        let mut file = run.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        self.runs.push(file);
        self.held_weight = 0;
        Ok(())
    }

    /// Prints every line of the hour in order, each ID once, leaving out the
    /// lines of `failed` objects.
    pub fn print(mut self, failed: &HashSet<u32>, out: &mut dyn Write) -> io::Result<Printed> {
        let mut printer = Printer {
            failed,
            out,
            last: None,
            printed: Printed::default(),
        };
        if self.runs.is_empty() {
            self.held.sort_unstable();
            for line in self.held {
                printer.print(line)?;
            }
            return Ok(printer.printed);
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut readers: Vec<BufReader<File>> = self.runs.into_iter().map(BufReader::new).collect();
        let mut heads = BinaryHeap::with_capacity(readers.len());
        for (run, reader) in readers.iter_mut().enumerate() {
            if let Some(line) = Kept::read_from(reader)? {
                heads.push(Reverse((line, run)));
            }
        }
        while let Some(Reverse((line, run))) = heads.pop() {
            if let Some(next) = Kept::read_from(&mut readers[run])? {
                heads.push(Reverse((next, run)));
            }
            printer.print(line)?;
        }
        Ok(printer.printed)
    }
}

struct Printer<'a> {
    failed: &'a HashSet<u32>,
    out: &'a mut dyn Write,
    /// `_ts` and `_id` of the last line printed.
    last: Option<(i64, Box<str>)>,
    printed: Printed,
}

impl Printer<'_> {
    fn print(&mut self, line: Kept) -> io::Result<()> {
        if self.failed.contains(&line.object) {
            return Ok(());
        }
        if !line.id.is_empty() {
            if self
                .last
                .as_ref()
                .is_some_and(|(ts, id)| *ts == line.ts && *id == line.id)
            {
                self.printed.duplicates += 1;
                return Ok(());
            }
            self.last = Some((line.ts, line.id));
        }
        self.out.write_all(line.text.as_bytes())?;
        self.out.write_all(b"\n")?;
        self.printed.lines += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(ts: i64, id: &str, object: u32, position: u64) -> Kept {
        Kept {
            ts,
            id: id.into(),
            object,
            position,
            text: format!("{id}@{ts}/{object}").into(),
        }
    }

    fn printed(budget: usize, lines: &[Kept], failed: &[u32]) -> (Vec<String>, Printed) {
        let mut sorter = HourSorter::new(budget);
        for l in lines {
            sorter.push(l.clone()).unwrap();
        }
        let spilled = !sorter.runs.is_empty();
        assert_eq!(
            spilled,
            budget < 1000,
            "budget {budget} should decide spilling"
        );
        let mut out = Vec::new();
        let failed: HashSet<u32> = failed.iter().copied().collect();
        let p = sorter.print(&failed, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        (text.lines().map(str::to_owned).collect(), p)
    }

    #[test]
    fn lines_come_out_in_time_order_each_id_once_whether_or_not_they_spilled() {
        let lines = [
            kept(30, "c", 0, 0),
            kept(10, "a", 0, 1),
            kept(20, "b", 0, 2),
            kept(10, "a", 1, 0), // a copy in a later part
            kept(20, "", 1, 1),  // no ID: never a duplicate
            kept(20, "", 1, 2),
            kept(5, "z", 2, 0), // in an object that failed
        ];
        for budget in [1 << 20, 70, 1] {
            let (out, p) = printed(budget, &lines, &[2]);
            assert_eq!(
                out,
                ["a@10/0", "@20/1", "@20/1", "b@20/0", "c@30/0"],
                "budget {budget}"
            );
            assert_eq!(
                p,
                Printed {
                    lines: 5,
                    duplicates: 1
                }
            );
        }
    }

    #[test]
    fn the_copy_from_the_earliest_good_part_is_the_one_printed() {
        let lines = [
            kept(10, "a", 3, 0),
            kept(10, "a", 1, 9),
            kept(10, "a", 2, 0),
        ];
        let (out, p) = printed(1, &lines, &[1]);
        assert_eq!(out, ["a@10/2"]);
        assert_eq!(p.duplicates, 1);
    }
}
