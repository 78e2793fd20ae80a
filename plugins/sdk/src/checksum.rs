//! Checksums more than one adapter needs: the Modbus RTU adapter checks answers with CRC-16/MODBUS, and the
//! serial adapter offers it for framed protocols.

/// CRC-16/MODBUS (polynomial 0xA001 reflected, initial value 0xFFFF); sent on the wire low byte first.
pub fn crc16_modbus(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_is_the_modbus_one() {
        // "01 03 00 00 00 01 84 0A": read one holding register of unit 1, CRC sent low byte first.
        assert_eq!(crc16_modbus(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x01]), 0x0A84);
        // The catalogue's check value (CRC RevEng): "123456789".
        assert_eq!(crc16_modbus(b"123456789"), 0x4B37);
    }
}
