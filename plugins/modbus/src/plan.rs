//! The poll plan: which read requests to send, and which points each answers.
//!
//! RS-485 buses are slow (a request/response at 9600 baud is ~30 ms) and many devices limit how many requests
//! per second they serve, so points are read in as few requests as the device allows: points with the same
//! unit, table and poll interval are sorted by address and merged while the merged range stays within the
//! request limit and the hole between two points is at most `max_gap` registers (or coils). Holes are read and
//! thrown away. Overlapping points (two bits of one register, a register read both as u32 and as two u16s) share
//! the registers.
//!
//! Pure functions only: the adapter runs the result, the tests check it.
use std::time::Duration;

use crate::address::Table;

/// One point as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanPoint {
    /// The point's index in the device's point list (what readings are matched back by).
    pub index: usize,
    /// Modbus unit (slave) id.
    pub unit: u8,
    /// Its table.
    pub table: Table,
    /// Its poll interval.
    pub interval: Duration,
    /// 0-based offset of its first register / bit.
    pub offset: u16,
    /// Registers (or bits) it occupies.
    pub width: u16,
}

/// Request limits of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Registers (or bits) that may be read and discarded between two points of one request.
    pub max_gap: u16,
    /// Most registers per read request (≤ 125).
    pub max_registers: u16,
    /// Most coils / discrete inputs per read request (≤ 2000).
    pub max_coils: u16,
}

impl Default for Limits {
    /// Contiguous points only (some devices answer an unmapped register in a hole with an exception, or
    /// clear it on read), at the protocol maxima.
    fn default() -> Self {
        Limits {
            max_gap: 0,
            max_registers: 125,
            max_coils: 2000,
        }
    }
}

impl Limits {
    /// The request size limit for a table.
    pub fn max_for(&self, table: Table) -> u16 {
        if table.is_bits() {
            self.max_coils.min(2000)
        } else {
            self.max_registers.min(125)
        }
    }
}

/// Where one point's data sits inside a request's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// The point's index.
    pub point: usize,
    /// Offset of its first register / bit from the request's start.
    pub at: u16,
    /// Its width.
    pub width: u16,
}

/// One read request (FC1, FC2, FC3 or FC4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    /// Unit id.
    pub unit: u8,
    /// Table (selects the function code).
    pub table: Table,
    /// First register / bit.
    pub start: u16,
    /// How many registers / bits.
    pub count: u16,
    /// The points answered by it, by address.
    pub members: Vec<Member>,
}

impl ReadRequest {
    /// One request per distinct address range of the members: the fallback when a device rejects a merged
    /// read (typically `IllegalDataAddress` because a hole is not mapped), so one bad register does not make
    /// its neighbours bad too.
    pub fn split(&self) -> Vec<ReadRequest> {
        let mut out: Vec<ReadRequest> = Vec::new();
        for m in &self.members {
            let start = self.start + m.at;
            match out
                .iter_mut()
                .find(|r| r.start == start && r.count == m.width)
            {
                Some(r) => r.members.push(Member { at: 0, ..*m }),
                None => out.push(ReadRequest {
                    unit: self.unit,
                    table: self.table,
                    start,
                    count: m.width,
                    members: vec![Member { at: 0, ..*m }],
                }),
            }
        }
        out
    }

    /// Whether the request serves more than one distinct address range (so splitting it can help).
    pub fn is_merged(&self) -> bool {
        self.members
            .iter()
            .any(|m| m.at != self.members[0].at || m.width != self.members[0].width)
    }
}

/// The requests for one poll interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanGroup {
    /// How often.
    pub interval: Duration,
    /// What to send, ordered by unit, table and address.
    pub requests: Vec<ReadRequest>,
}

impl PlanGroup {
    /// The point indices this group reads, in request order.
    pub fn points(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .requests
            .iter()
            .flat_map(|r| r.members.iter().map(|m| m.point))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// Builds the plan: one group per distinct interval (shortest first), each with the fewest requests allowed.
pub fn plan(points: &[PlanPoint], limits: &Limits) -> Vec<PlanGroup> {
    let mut sorted: Vec<PlanPoint> = points.to_vec();
    sorted.sort_by_key(|p| (p.interval, p.unit, p.table, p.offset, p.width, p.index));

    let mut groups: Vec<PlanGroup> = Vec::new();
    let mut cur: Option<ReadRequest> = None;
    let mut cur_key: Option<(Duration, u8, Table)> = None;

    for p in sorted {
        let key = (p.interval, p.unit, p.table);
        let max = u32::from(limits.max_for(p.table).max(1));
        let (s, e) = (
            u32::from(p.offset),
            u32::from(p.offset) + u32::from(p.width),
        );
        if let (Some(req), Some(k)) = (cur.as_mut(), cur_key) {
            let (rs, re) = (
                u32::from(req.start),
                u32::from(req.start) + u32::from(req.count),
            );
            let gap = s.saturating_sub(re);
            if k == key && gap <= u32::from(limits.max_gap) && e.max(re) - rs <= max {
                req.count = (e.max(re) - rs) as u16;
                req.members.push(Member {
                    point: p.index,
                    at: (s - rs) as u16,
                    width: p.width,
                });
                continue;
            }
        }
        if let Some(done) = cur.take() {
            push(&mut groups, cur_key.map(|k| k.0).unwrap_or_default(), done);
        }
        cur = Some(ReadRequest {
            unit: p.unit,
            table: p.table,
            start: p.offset,
            count: p.width,
            members: vec![Member {
                point: p.index,
                at: 0,
                width: p.width,
            }],
        });
        cur_key = Some(key);
    }
    if let Some(done) = cur.take() {
        push(&mut groups, cur_key.map(|k| k.0).unwrap_or_default(), done);
    }
    groups
}

fn push(groups: &mut Vec<PlanGroup>, interval: Duration, req: ReadRequest) {
    match groups.last_mut() {
        Some(g) if g.interval == interval => g.requests.push(req),
        _ => groups.push(PlanGroup {
            interval,
            requests: vec![req],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: Duration = Duration::from_secs(1);
    const S10: Duration = Duration::from_secs(10);

    fn pt(index: usize, table: Table, offset: u16, width: u16) -> PlanPoint {
        PlanPoint {
            index,
            unit: 1,
            table,
            interval: S1,
            offset,
            width,
        }
    }

    fn ranges(groups: &[PlanGroup]) -> Vec<(Table, u16, u16)> {
        groups
            .iter()
            .flat_map(|g| g.requests.iter().map(|r| (r.table, r.start, r.count)))
            .collect()
    }

    #[test]
    fn contiguous_points_become_one_request() {
        use Table::InputRegister as IR;
        // Three f32 voltages at 0, 2, 4, given out of order.
        let pts = [pt(0, IR, 4, 2), pt(1, IR, 0, 2), pt(2, IR, 2, 2)];
        let g = plan(&pts, &Limits::default());
        assert_eq!(ranges(&g), vec![(IR, 0, 6)]);
        let r = &g[0].requests[0];
        assert_eq!(
            r.members,
            vec![
                Member {
                    point: 1,
                    at: 0,
                    width: 2
                },
                Member {
                    point: 2,
                    at: 2,
                    width: 2
                },
                Member {
                    point: 0,
                    at: 4,
                    width: 2
                },
            ]
        );
    }

    #[test]
    fn gaps_follow_max_gap() {
        use Table::HoldingRegister as HR;
        let pts = [pt(0, HR, 0, 1), pt(1, HR, 3, 1), pt(2, HR, 10, 1)];
        // No gap allowed: three requests.
        assert_eq!(
            ranges(&plan(&pts, &Limits::default())),
            vec![(HR, 0, 1), (HR, 3, 1), (HR, 10, 1)]
        );
        // A gap of 2 bridges 0..3 but not 3..10.
        let l = Limits {
            max_gap: 2,
            ..Limits::default()
        };
        assert_eq!(ranges(&plan(&pts, &l)), vec![(HR, 0, 4), (HR, 10, 1)]);
        let l = Limits {
            max_gap: 6,
            ..Limits::default()
        };
        assert_eq!(ranges(&plan(&pts, &l)), vec![(HR, 0, 11)]);
    }

    #[test]
    fn requests_respect_the_size_limit() {
        use Table::HoldingRegister as HR;
        // 100 contiguous f32 = 200 registers: 125 max -> split at a point boundary.
        let pts: Vec<PlanPoint> = (0..100).map(|i| pt(i, HR, (i * 2) as u16, 2)).collect();
        let g = plan(&pts, &Limits::default());
        assert_eq!(ranges(&g), vec![(HR, 0, 124), (HR, 124, 76)]);
        // A device that rejects long reads.
        let l = Limits {
            max_registers: 16,
            ..Limits::default()
        };
        let g = plan(&pts, &l);
        assert_eq!(g[0].requests.len(), 13);
        assert!(g[0].requests.iter().all(|r| r.count <= 16));
        // A limit above the protocol maximum is capped.
        let l = Limits {
            max_registers: 1000,
            ..Limits::default()
        };
        assert!(plan(&pts, &l)[0].requests.iter().all(|r| r.count <= 125));
    }

    #[test]
    fn coils_use_their_own_limit() {
        use Table::Coil as C;
        let pts: Vec<PlanPoint> = (0..2500).map(|i| pt(i, C, i as u16, 1)).collect();
        assert_eq!(
            ranges(&plan(&pts, &Limits::default())),
            vec![(C, 0, 2000), (C, 2000, 500)]
        );
        let l = Limits {
            max_coils: 1000,
            ..Limits::default()
        };
        assert_eq!(plan(&pts, &l)[0].requests.len(), 3);
    }

    #[test]
    fn tables_units_and_intervals_are_never_merged() {
        use Table::*;
        let mut pts = vec![
            pt(0, HoldingRegister, 0, 1),
            pt(1, InputRegister, 1, 1),
            pt(2, HoldingRegister, 1, 1),
            PlanPoint {
                unit: 2,
                ..pt(3, HoldingRegister, 2, 1)
            },
            PlanPoint {
                interval: S10,
                ..pt(4, HoldingRegister, 3, 1)
            },
        ];
        pts.push(pt(5, Coil, 0, 1));
        let g = plan(&pts, &Limits::default());
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].interval, S1);
        assert_eq!(g[1].interval, S10);
        let r: Vec<(u8, Table, u16, u16)> = g[0]
            .requests
            .iter()
            .map(|r| (r.unit, r.table, r.start, r.count))
            .collect();
        assert_eq!(
            r,
            vec![
                (1, Coil, 0, 1),
                (1, InputRegister, 1, 1),
                (1, HoldingRegister, 0, 2),
                (2, HoldingRegister, 2, 1)
            ]
        );
        assert_eq!(g[1].requests[0].members[0].point, 4);
        assert_eq!(g[0].points(), vec![0, 1, 2, 3, 5]);
    }

    #[test]
    fn overlapping_points_share_registers() {
        use Table::HoldingRegister as HR;
        // Status word read as bits 0 and 3, plus the u32 that starts on it.
        let pts = [
            pt(0, HR, 10, 1),
            pt(1, HR, 10, 1),
            pt(2, HR, 10, 2),
            pt(3, HR, 11, 1),
        ];
        let g = plan(&pts, &Limits::default());
        assert_eq!(ranges(&g), vec![(HR, 10, 2)]);
        assert_eq!(g[0].requests[0].members.len(), 4);
    }

    #[test]
    fn top_of_the_address_space() {
        use Table::HoldingRegister as HR;
        let pts = [pt(0, HR, 65532, 4), pt(1, HR, 65530, 2)];
        assert_eq!(
            ranges(&plan(&pts, &Limits::default())),
            vec![(HR, 65530, 6)]
        );
    }

    #[test]
    fn split_gives_one_request_per_range() {
        use Table::HoldingRegister as HR;
        let l = Limits {
            max_gap: 10,
            ..Limits::default()
        };
        let pts = [
            pt(0, HR, 0, 2),
            pt(1, HR, 0, 1),
            pt(2, HR, 5, 1),
            pt(3, HR, 5, 1),
        ];
        let g = plan(&pts, &l);
        let req = &g[0].requests[0];
        assert!(req.is_merged());
        let parts = req.split();
        let r: Vec<(u16, u16, usize)> = parts
            .iter()
            .map(|r| (r.start, r.count, r.members.len()))
            .collect();
        assert_eq!(r, vec![(0, 1, 1), (0, 2, 1), (5, 1, 2)]);
        assert!(parts.iter().all(|p| !p.is_merged()));
        assert!(parts.iter().all(|p| p.members.iter().all(|m| m.at == 0)));
    }

    #[test]
    fn empty_plan() {
        assert!(plan(&[], &Limits::default()).is_empty());
    }
}
