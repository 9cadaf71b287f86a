//! tchu
