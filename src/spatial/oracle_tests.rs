//! Oracle tests
